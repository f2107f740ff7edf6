"""CLIP-LoRA: placement, counts and scale as the reference code sets them, checked against the module list of a
plain CLIPModel and a plain-torch forward of one adapted projection."""

import math

import pytest
import torch
from conftest import TINY_CLIP, base_args, i2t_args, read_json
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file
from transformers import CLIPModel

from llamafactory.clip_finetune.methods import get_method
from llamafactory.clip_finetune.train.arguments import check_clip_args


@pytest.mark.parametrize("task_args", [base_args, i2t_args])
def test_lora_sits_on_q_k_v_of_every_layer_of_both_towers(tmp_path, task_args):
    model_args, _, training_args, finetuning_args = check_clip_args(task_args(tmp_path, finetuning_type="clip_lora"))
    assert (finetuning_args.lora_rank, finetuning_args.lora_alpha, finetuning_args.lora_dropout) == (2, 1, 0.25)
    assert finetuning_args.freeze_text_tower is False
    plain = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32)
    expected = {
        name: module
        for name, module in plain.named_modules()
        if name.startswith(("vision_model.", "text_model.")) and name.endswith(("q_proj", "k_proj", "v_proj"))
    }
    peft_model = get_method("clip_lora")().prepare(
        CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32), finetuning_args, training_args
    )
    adapted = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and "default" in module.lora_A
    }
    assert set(adapted) == set(expected)
    rank = 2
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == sum(rank * (m.in_features + m.out_features) for m in expected.values())
    layer = adapted["vision_model.encoder.layers.0.self_attn.q_proj"]
    assert layer.scaling["default"] == pytest.approx(1 / math.sqrt(rank))
    assert layer.lora_dropout["default"].p == 0.25

    # the adapted projection computes W x + b + alpha / sqrt(r) * B A x (eval mode: no dropout)
    torch.manual_seed(0)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    layer.eval()
    x = torch.randn(3, layer.in_features)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    base = expected["vision_model.encoder.layers.0.self_attn.q_proj"]
    reference = x @ base.weight.t() + base.bias + (1 / math.sqrt(rank)) * (x @ A.t() @ B.t())
    assert torch.allclose(layer(x), reference, atol=1e-5)


def test_clip_lora_trains_both_towers_and_keeps_a_chosen_rank(tmp_path):
    run_exp(base_args(tmp_path / "run", finetuning_type="clip_lora", learning_rate=1e-2))
    adapter = load_file(tmp_path / "run" / "adapter_model.safetensors")
    for tower in ("vision_model", "text_model"):
        assert any(tower in k and ".lora_B." in k and adapter[k].abs().sum() > 0 for k in adapter), tower
    assert "eval_accuracy" in read_json(tmp_path / "run" / "all_results.json")
    _, _, _, finetuning_args = check_clip_args(base_args(tmp_path / "o", finetuning_type="clip_lora", lora_rank=4))
    assert finetuning_args.lora_rank == 4 and finetuning_args.lora_alpha == 1
