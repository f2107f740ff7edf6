"""WiSE-FT: every alpha evaluated, alpha picked on val only, the output is the interpolation (checked against a plain
torch lerp of the zero-shot and the finetuned files), and the pure finetune stays available."""

import pytest
import torch
from conftest import TINY_CLIP, base_args, i2t_args, read_json
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file

from llamafactory.clip_finetune.train.arguments import check_clip_args


ALPHAS = [0.0, 0.5, 1.0]


def best_alpha(results, main):
    scores = {a: results[f"val_wise_ft_{a:g}_{main}"] for a in ALPHAS}
    return max(scores, key=lambda a: (scores[a], a))


@pytest.mark.parametrize("task_args, main", [(base_args, "accuracy"), (i2t_args, "i2t_r1")])
def test_full_finetune_output_is_the_interpolation_picked_on_val(tmp_path, task_args, main):
    val = "fashion_mnist_val" if task_args is base_args else "emoji_captions_val"
    run_exp(task_args(tmp_path / "run", learning_rate=1e-2, val_dataset=val, wise_ft_alphas=ALPHAS))
    results = read_json(tmp_path / "run" / "all_results.json")
    alpha = results["wise_ft_alpha"]
    assert alpha == best_alpha(results, main)
    assert results[f"eval_{main}"] == pytest.approx(results[f"eval_wise_ft_{alpha:g}_{main}"])

    start = load_file(TINY_CLIP / "model.safetensors")
    finetuned = load_file(tmp_path / "run" / "finetuned" / "model.safetensors")
    output = load_file(tmp_path / "run" / "model.safetensors")
    changed = [k for k in start if not torch.equal(start[k].float(), finetuned[k].float())]
    assert changed
    for key in start:
        expected = torch.lerp(start[key].float(), finetuned[key].float(), alpha)
        assert torch.allclose(output[key].float(), expected, atol=1e-6), key

    # alpha 0 is the zero-shot model and alpha 1 the finetune: the same numbers as evaluating those checkpoints
    zero_shot = tmp_path / "zero_shot"
    run_exp(task_args(zero_shot, do_train=False))
    assert results[f"eval_wise_ft_0_{main}"] == pytest.approx(
        read_json(zero_shot / "all_results.json")[f"eval_{main}"]
    )
    again = tmp_path / "finetuned_eval"
    run_exp(task_args(again, do_train=False, model_name_or_path=str(tmp_path / "run" / "finetuned")))
    assert results[f"eval_wise_ft_1_{main}"] == pytest.approx(read_json(again / "all_results.json")[f"eval_{main}"])


def test_lora_interpolation_scales_the_update(tmp_path):
    """For LoRA the interpolated weights are W0 + alpha * B A * scaling: B is scaled, A is the finetuned one."""
    run_exp(
        base_args(
            tmp_path, finetuning_type="lora", learning_rate=1e-2, val_dataset="fashion_mnist_val", wise_ft_alphas=[0.5]
        )
    )
    assert read_json(tmp_path / "all_results.json")["wise_ft_alpha"] == 0.5
    output = load_file(tmp_path / "adapter_model.safetensors")
    finetuned = load_file(tmp_path / "finetuned" / "adapter_model.safetensors")
    assert output.keys() == finetuned.keys()
    for key in finetuned:
        expected = finetuned[key] * (0.5 if ".lora_B." in key else 1.0)
        assert torch.allclose(output[key].float(), expected.float(), atol=1e-7), key
    assert any(".lora_B." in key and finetuned[key].abs().sum() > 0 for key in finetuned)


def test_wise_ft_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(
        ValueError, match="wise_ft_alphas interpolates changed weights: use it with bias, clip_lora, full, lora"
    ):
        run_exp(base_args(tmp_path, finetuning_type="adapter", val_dataset="fashion_mnist_val", wise_ft_alphas=[0.5]))
    with pytest.raises(ValueError, match="picks alpha on the validation split"):
        run_exp(base_args(tmp_path, wise_ft_alphas=[0.5]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        run_exp(base_args(tmp_path, val_dataset="fashion_mnist_val", wise_ft_alphas=[1.5]))
    with pytest.raises(ValueError, match="run it without FSDP or DeepSpeed"):  # before any training
        check_clip_args(base_args(tmp_path, val_dataset="fashion_mnist_val", wise_ft_alphas=[0.5], fsdp="full_shard"))
