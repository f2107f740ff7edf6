"""Methods whose new layers PEFT owns: the backbone stays byte-identical, the adapter reloads through PEFT."""

import pytest
import torch
from conftest import DATA_DIR, TINY_CLIP, base_args, i2t_args, read_json
from llamafactory.train.tuner import run_exp
from peft import PeftModel
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor, TrainerCallback

from llamafactory.clip_finetune.data import load_clip_datasets
from llamafactory.clip_finetune.data.transforms import ImageSpec
from llamafactory.clip_finetune.hparams import ClipDataArguments
from llamafactory.clip_finetune.model import ClipTaskModel, TextTokenizer
from llamafactory.clip_finetune.tasks import ClassificationTask


# id -> (finetuning_type, overrides, closed-form trainable count on the tiny model, what every saved key contains)
PEFT_METHODS = {
    # 2 vision layers x (q_proj, v_proj) x rank 4 x (64 in + 64 out)
    "lora": ("lora", {"lora_rank": 4}, 2 * 2 * 4 * (64 + 64), ("vision_model.", "_proj.lora_")),
    # projection dim 32, reduction 4: 32 -> 8 -> 32, no bias
    "adapter": ("adapter", {"adapter_reduction": 4}, 2 * 32 * 8, ("visual_projection.clip_adapter_",)),
    # length x width 64
    "vpt_shallow": ("prompt", {"prompt_length": 5}, 5 * 64, ("vision_model.encoder.clip_vpt_prompts",)),
    # layers x length x width
    "vpt_deep": ("prompt", {"prompt_length": 3, "prompt_deep": True}, 2 * 3 * 64, ("encoder.clip_vpt_prompts",)),
}


@pytest.mark.parametrize("method", sorted(PEFT_METHODS))
def test_peft_method_trains_only_its_layers_and_reloads_with_the_same_accuracy(tmp_path, method):
    finetuning_type, overrides, count, markers = PEFT_METHODS[method]
    run_exp(base_args(tmp_path, finetuning_type=finetuning_type, learning_rate=1e-2, **overrides))
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert sum(t.numel() for t in adapter.values()) == count
    assert all(all(m in k for m in markers) for k in adapter)
    assert not (tmp_path / "model.safetensors").exists()

    # the three lines of the README: base checkpoint + adapter
    base = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path).eval()
    processor = CLIPProcessor.from_pretrained(tmp_path)

    start = load_file(TINY_CLIP / "model.safetensors")
    backbone = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }
    assert all(torch.equal(backbone[k], v.float()) for k, v in start.items())  # backbone untouched

    args = ClipDataArguments(eval_dataset="fashion_mnist_test", dataset_dir=str(DATA_DIR))
    data = load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))
    task = ClassificationTask(
        data.classnames, data.templates, TextTokenizer(processor.tokenizer), text_trainable=False
    )
    wrapper = ClipTaskModel(model, task, data.spec).eval()
    task.setup(wrapper)
    batches = [
        {
            "pixel_values": torch.stack([data.eval[i]["pixel_values"] for i in range(len(data.eval))]),
            "labels": data.eval.labels,
        }
    ]
    metrics = task.evaluate(wrapper, batches, lambda x: x, data.eval)
    assert metrics["accuracy"] == read_json(tmp_path / "all_results.json")["eval_accuracy"]


@pytest.mark.parametrize(
    "method, overrides, text_marker, image_marker",
    [
        ("lora", {}, ".text_model.", ".vision_model."),
        ("adapter", {"adapter_target": "both"}, "text_projection.clip_adapter", "visual_projection.clip_adapter"),
    ],
)
def test_peft_method_on_both_towers_for_image_to_text(tmp_path, method, overrides, text_marker, image_marker):
    run_exp(i2t_args(tmp_path, finetuning_type=method, learning_rate=1e-2, **overrides))
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert any(text_marker in k for k in adapter) and any(image_marker in k for k in adapter)
    assert "eval_i2t_r1" in read_json(tmp_path / "all_results.json")


def test_text_adapter_for_classification_recomputes_class_features_and_trains(tmp_path):
    run_exp(base_args(tmp_path, finetuning_type="adapter", adapter_target="text", learning_rate=1e-1))
    adapter = load_file(tmp_path / "adapter_model.safetensors")
    assert adapter and all("text_projection.clip_adapter_" in k for k in adapter)
    assert any(t.abs().sum() > 0 and not torch.equal(t, t.flip(0)) for t in adapter.values())


@pytest.mark.parametrize("method", sorted(PEFT_METHODS))
def test_peft_method_resumes_from_a_checkpoint(tmp_path, method):
    """Stopped at step 2 and resumed to 4: the adapter ends as a run that went to step 4 at once."""
    finetuning_type, overrides, _, _ = PEFT_METHODS[method]
    common = dict(
        finetuning_type=finetuning_type,
        save_strategy="steps",
        save_steps=2,
        do_eval=False,
        lr_scheduler_type="constant",
        **overrides,
    )
    run_exp(base_args(tmp_path / "resume", max_steps=2, **common))
    assert (tmp_path / "resume" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    run_exp(base_args(tmp_path / "resume", max_steps=4, **common))
    assert read_json(tmp_path / "resume" / "trainer_state.json")["global_step"] == 4
    run_exp(base_args(tmp_path / "straight", max_steps=4, **common))
    resumed = load_file(tmp_path / "resume" / "adapter_model.safetensors")
    expected = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    assert resumed.keys() == expected.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)


class VisionForwardCounter(TrainerCallback):
    """Counts forward passes of the image tower between train begin and train end."""

    def __init__(self):
        self.calls, self.handle = 0, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def count(*_):
            self.calls += 1

        self.handle = model.clip.base_model.model.vision_model.register_forward_hook(count)

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()


@pytest.mark.parametrize("feature_cache", [True, False])
def test_adapter_feature_cache_skips_the_frozen_backbone_during_training(tmp_path, feature_cache):
    counter = VisionForwardCounter()
    args = base_args(
        tmp_path,
        finetuning_type="adapter",
        feature_cache=feature_cache,
        feature_cache_views=2,
        num_train_epochs=3,
        learning_rate=1e-2,
    )
    run_exp(args, callbacks=[counter])
    steps = read_json(tmp_path / "trainer_state.json")["global_step"]
    assert steps == 9  # 20 images / 8 per step = 3 steps x 3 epochs
    assert counter.calls == (0 if feature_cache else steps)
    assert 0.0 <= read_json(tmp_path / "all_results.json")["eval_accuracy"] <= 1.0


def test_vpt_initialization_uses_the_real_patch_size_and_prompts_sit_after_cls():
    from peft import get_peft_model

    from llamafactory.clip_finetune.peft_tuners import ClipVptConfig

    clip = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32)  # patch 8, width 64
    model = get_peft_model(clip, ClipVptConfig(prompt_length=50, prompt_deep=True))
    prompts = model.base_model.model.vision_model.encoder.clip_vpt_prompts["default"]
    bound = (6 / (3 * 8 * 8 + 64)) ** 0.5
    assert prompts.shape == (2, 50, 64) and prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    out = model.base_model.model.vision_model(pixel_values=torch.zeros(1, 3, 32, 32))
    assert out.last_hidden_state.shape == (1, 1 + 50 + 16, 64)  # [CLS, prompts, 16 patches]


class PromptProbe(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.prompts = model.clip.base_model.model.vision_model.encoder.clip_vpt_prompts["default"]
        self.start = self.prompts.detach().clone()


def test_vpt_deep_trains_every_layers_prompts_under_gradient_checkpointing(tmp_path):
    probe = PromptProbe()
    args = base_args(
        tmp_path,
        finetuning_type="prompt",
        prompt_deep=True,
        gradient_checkpointing=True,
        learning_rate=1e-2,
        do_eval=False,
    )
    run_exp(args, callbacks=[probe])
    moved = (probe.prompts.detach() - probe.start).abs().amax(dim=(1, 2))
    assert moved.shape == (2,) and bool((moved > 0).all())  # gradients reached the prompts of both layers


def test_lora_export_merged_writes_a_standalone_clip(tmp_path):
    run_exp(base_args(tmp_path, finetuning_type="lora", learning_rate=1e-2, export_merged=True))
    merged = CLIPModel.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    base = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, tmp_path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = adapted.base_model.model.get_image_features(pixel_values=pixels).pooler_output
        got = merged.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(got, expected, atol=1e-5)
    q_proj = adapted.base_model.model.vision_model.encoder.layers[0].self_attn.q_proj
    assert not torch.equal(merged.vision_model.encoder.layers[0].self_attn.q_proj.weight, q_proj.base_layer.weight)


def test_export_merged_is_refused_for_methods_a_plain_checkpoint_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="export_merged applies to lora: adapter adds new computation"):
        run_exp(base_args(tmp_path, finetuning_type="adapter", export_merged=True))


def test_vpt_prompts_follow_the_base_models_dtype():
    from peft import get_peft_model

    from llamafactory.clip_finetune.peft_tuners import ClipVptConfig

    clip = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32).double()
    model = get_peft_model(clip, ClipVptConfig(prompt_project=8))
    encoder = model.base_model.model.vision_model.encoder
    assert encoder.clip_vpt_prompts["default"].dtype == torch.float64
    assert encoder.clip_vpt_project["default"].weight.dtype == torch.float64


def test_task_model_zero_grad_clears_parts_set_after_the_first_call():
    """``ClipTaskModel.zero_grad`` walks a cached parameter list; a head set later (Tip's cache) is cleared too."""
    clip = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32)
    processor = CLIPProcessor.from_pretrained(TINY_CLIP)
    spec = ImageSpec.from_processor(processor.image_processor, ClipDataArguments())
    model = ClipTaskModel(
        clip, ClassificationTask(["a", "b"], ["{}"], TextTokenizer(processor.tokenizer), False), spec
    )
    model.clip.logit_scale.grad = torch.ones(())
    model.zero_grad()
    assert model.clip.logit_scale.grad is None
    model.head = torch.nn.Linear(2, 2)
    model.head.weight.grad = torch.ones(2, 2)
    model.clip.logit_scale.grad = torch.ones(())
    model.zero_grad()
    assert model.head.weight.grad is None and model.clip.logit_scale.grad is None
    model.head.weight.grad = torch.ones(2, 2)
    model.zero_grad(set_to_none=False)
    assert torch.equal(model.head.weight.grad, torch.zeros(2, 2))


def test_gather_rows_reassembles_rank_order_across_slices(monkeypatch):
    """Rank 0's view of a 2-rank gather of 7 rows (4 + 3, padded) in slices of one row: the same rows, in order."""
    import types

    from llamafactory.clip_finetune.methods import feature_cache

    rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    mine, theirs = (
        rows[feature_cache.shard(7, rank, 2).start : feature_cache.shard(7, rank, 2).stop] for rank in (0, 1)
    )
    assert len(mine) == 4 and len(theirs) == 3
    theirs = torch.cat([theirs, torch.zeros(1, 3)])  # what rank 1 pads to

    class TwoRanks:
        num_processes, offset, calls = 2, 0, 0

        def gather(self, local):
            part = theirs[self.offset : self.offset + len(local)]
            self.offset, self.calls = self.offset + len(local), self.calls + 1
            return torch.cat([local, part])

    accelerator = TwoRanks()
    trainer = types.SimpleNamespace(accelerator=accelerator, args=types.SimpleNamespace(device=torch.device("cpu")))
    monkeypatch.setattr(feature_cache, "GATHER_BYTES", 2 * 3 * 4)  # one row of both ranks per collective
    gathered = feature_cache.gather_rows(trainer, mine, 7, torch.device("cpu"))
    assert torch.equal(gathered, rows) and accelerator.calls == 4
