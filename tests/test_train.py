"""End-to-end runs in-process through LLaMA-Factory's `run_exp`, as its own tests do."""

import json
import re

import pytest
import torch
from conftest import TINY_CLIP, base_args, i2t_args, read_json, run_cli
from llamafactory.train.tuner import run_exp
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor


def changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def test_classification_full_finetune_trains_image_tower_only(tmp_path):
    out = tmp_path / "cls"
    run_exp(base_args(out, num_train_epochs=2))
    before = load_file(TINY_CLIP / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert changed(before, after, "vision_model.") and changed(before, after, "visual_projection.")
    assert not changed(before, after, "text_model.") and not changed(before, after, "text_projection.")
    assert torch.equal(before["logit_scale"].float(), after["logit_scale"].float())

    results = read_json(out / "all_results.json")
    assert 0.0 <= results["eval_accuracy"] <= results["eval_top5_accuracy"] <= 1.0
    logs = [line for line in (out / "trainer_log.jsonl").read_text().splitlines() if line]
    assert len(logs) >= 2 and '"loss"' in logs[0]

    model = CLIPModel.from_pretrained(out)  # a plain CLIP checkpoint
    processor = CLIPProcessor.from_pretrained(out)
    assert torch.equal(
        model.vision_model.embeddings.patch_embedding.weight,
        after["vision_model.embeddings.patch_embedding.weight"].float(),
    )
    assert processor.tokenizer("a photo of a dog.")["input_ids"] == [49406, 320, 1125, 539, 320, 1929, 269, 49407]


def test_zero_shot_evaluation_matches_a_manual_computation(tmp_path):
    out = tmp_path / "zs"
    run_exp(base_args(out, do_train=False, dataset=None, num_shots=None))
    accuracy = read_json(out / "all_results.json")["eval_accuracy"]

    from llamafactory.clip_finetune.data import load_clip_datasets
    from llamafactory.clip_finetune.hparams import ClipDataArguments
    from llamafactory.clip_finetune.model import TextTokenizer

    model = CLIPModel.from_pretrained(TINY_CLIP, dtype=torch.float32).eval()  # stored as float16
    processor = CLIPProcessor.from_pretrained(TINY_CLIP)
    args = ClipDataArguments(eval_dataset="fashion_mnist_test", dataset_dir=str(TINY_CLIP.parents[1]))
    data = load_clip_datasets(args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer))
    templates = data.templates
    with torch.no_grad():
        text = []
        for name in data.classnames:
            tokens = processor.tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
            feats = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
            text.append(torch.nn.functional.normalize(feats.mean(0), dim=-1))
        text = torch.stack(text)
        pixels = torch.stack([data.eval[i]["pixel_values"] for i in range(len(data.eval))]).float() / 255
        mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
        image = model.get_image_features(pixel_values=(pixels - mean) / std).pooler_output
        predictions = (torch.nn.functional.normalize(image, dim=-1) @ text.t()).argmax(-1)
    expected = (predictions == data.eval.labels).float().mean().item()
    assert abs(accuracy - expected) < 1e-6


def test_image_to_text_full_finetune_trains_both_towers(tmp_path):
    out = tmp_path / "i2t"
    run_exp(i2t_args(out))
    before = load_file(TINY_CLIP / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert changed(before, after, "vision_model.") and changed(before, after, "text_model.")
    results = read_json(out / "all_results.json")
    for key in ("eval_i2t_r1", "eval_i2t_r5", "eval_i2t_r10", "eval_t2i_r1", "eval_t2i_r5", "eval_t2i_r10"):
        assert 0.0 <= results[key] <= 1.0
    assert results["eval_i2t_r1"] <= results["eval_i2t_r5"] <= results["eval_i2t_r10"]


def test_resume_from_checkpoint_continues_the_run(tmp_path):
    """A run stopped at step 2 and resumed to step 4 ends with the weights of a run that went to step 4 at once (a
    constant rate, so that the first run's schedule is the same as the longer one's)."""
    out, straight = tmp_path / "resume", tmp_path / "straight"
    common = dict(save_strategy="steps", save_steps=2, do_eval=False, lr_scheduler_type="constant")
    run_exp(base_args(out, max_steps=2, **common))
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    run_exp(base_args(out, max_steps=4, **common))
    assert read_json(out / "trainer_state.json")["global_step"] == 4
    logged = [json.loads(line)["current_steps"] for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    # each run ends with a summary line at its last step; the second run went on from step 2, not from step 1
    assert logged == [1, 2, 2, 3, 4, 4]
    run_exp(base_args(straight, max_steps=4, **common))
    resumed, expected = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert not torch.equal(
        resumed["visual_projection.weight"],
        load_file(out / "checkpoint-2" / "model.safetensors")["visual_projection.weight"],
    )


@pytest.mark.parametrize("clip_optim", [None, "sgd", "adamw"])
def test_the_optimizer_holds_the_model_the_trainer_prepared_first(tmp_path, clip_optim):
    """FSDP (v1) makes the Trainer prepare the model first and call ``create_optimizer(model)`` with it: the
    optimizer must hold that module's parameters (a signature without ``model`` raised TypeError on every FSDP run)."""
    from llamafactory.clip_finetune.data import load_clip_datasets
    from llamafactory.clip_finetune.model import ClipTaskModel, TextTokenizer, load_clip
    from llamafactory.clip_finetune.tasks import ClassificationTask
    from llamafactory.clip_finetune.train.arguments import check_clip_args
    from llamafactory.clip_finetune.train.trainer import ClipTrainer

    overrides = {"clip_optim": clip_optim} if clip_optim else {}
    model_args, data_args, training_args, finetuning_args = check_clip_args(base_args(tmp_path, **overrides))
    clip, processor = load_clip(model_args)
    data = load_clip_datasets(
        data_args, "classification", 0, processor.image_processor, TextTokenizer(processor.tokenizer)
    )
    task = ClassificationTask(
        data.classnames, data.templates, TextTokenizer(processor.tokenizer), text_trainable=False
    )
    trainer = ClipTrainer(model=ClipTaskModel(clip, task, data.spec), args=training_args, optim_args=finetuning_args)
    prepared = torch.nn.Linear(3, 2)  # stands in for the FSDP-wrapped module
    optimizer = trainer.create_optimizer(prepared)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in prepared.parameters()}


def test_fsdp_that_accelerate_would_drop_is_refused(tmp_path):
    """On CPU processes started by torchrun, accelerate runs without FSDP2 and says nothing (`fsdp: full_shard` with
    `fsdp_version: 2` trained unsharded, as DDP): the stage refuses instead of ignoring the key. (FSDP1, or one CPU
    process: accelerate itself refuses, "no available devices".)"""
    args = base_args(tmp_path / "out", fsdp="full_shard", fsdp_config={"fsdp_version": 2}, max_steps=1, do_eval=False)
    config = tmp_path / "fsdp.yaml"
    config.write_text(json.dumps(args))  # JSON is YAML
    out = run_cli(["train", str(config)], env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    logs = out.stdout + out.stderr
    assert out.returncode != 0
    pattern = r"fsdp: full_shard was set, but accelerate .* this run is MULTI_CPU .*\s+.*unsharded"
    assert re.search(pattern, logs), logs[-3000:]
    assert not (tmp_path / "out" / "model.safetensors").exists()
