"""Through `llamafactory-cli`: the examples, torchrun with 2 processes, and LLM stages left untouched."""

import json
import os

import pytest
from conftest import DATA_DIR, ROOT, TINY_CLIP, read_json, run_cli


TINY = [
    f"model_name_or_path={TINY_CLIP}",
    f"dataset_dir={DATA_DIR}",
    "bf16=false",
    "dataloader_num_workers=0",
    "num_train_epochs=1",
    "per_device_train_batch_size=8",
    "logging_steps=1",
    "save_steps=10000",
    "image_size=32",
]


CLASSIFICATION = ["num_shots=2"]
I2T = [
    "clip_task=image_to_text",
    "dataset=emoji_captions_train",
    "eval_dataset=emoji_captions_test",
    "num_shots=null",
    "max_samples=32",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "example, extra",
    [
        ("full.yaml", CLASSIFICATION),
        ("i2t_full.yaml", ["max_samples=32"]),
        ("abs.yaml", [*I2T, "num_train_epochs=2"]),
        ("bias.yaml", CLASSIFICATION),
        ("bias.yaml", I2T),
        ("lora.yaml", I2T),
        ("adapter.yaml", I2T),
        ("vpt_shallow.yaml", CLASSIFICATION),
        ("vpt_deep.yaml", I2T),
        ("tip.yaml", [*CLASSIFICATION, "image_size=32", "tip_augment_epoch=2", "tip_search_step=[20,5]"]),
        ("tip_f.yaml", [*CLASSIFICATION, "image_size=32", "tip_augment_epoch=2", "num_train_epochs=2"]),
        ("clip_lora.yaml", [*CLASSIFICATION, "max_steps=3"]),
        ("clip_lora.yaml", [*I2T, "max_steps=3", "templates=null"]),
        ("wise_ft.yaml", [*CLASSIFICATION, "wise_ft_alphas=[0.0,1.0]"]),
        ("flyp.yaml", CLASSIFICATION),
        ("coop.yaml", CLASSIFICATION),
        ("linear_probe.yaml", [*CLASSIFICATION, "probe_epochs=20"]),
        ("lp_ft.yaml", [*CLASSIFICATION, "probe_epochs=20"]),
        ("hp_search.yaml", [*CLASSIFICATION, "hp_search.n_trials=2"]),  # a nested key overridden on the command line
        ("i2t_large_batch.yaml", ["max_samples=32", "per_device_train_batch_size=4"]),
    ],
)
def test_examples_run_with_the_tiny_checkpoint(tmp_path, example, extra):
    out = run_cli(["train", str(ROOT / "examples" / "clip" / example), f"output_dir={tmp_path}", *TINY, *extra])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = read_json(tmp_path / "all_results.json")
    assert (
        "eval_i2t_r1" in results
        if "clip_task=image_to_text" in extra or example.startswith("i2t_")
        else ("eval_accuracy" in results)
    )
    if example == "tip.yaml":  # training-free: no step, so no loss log; the cache is the result
        assert (tmp_path / "tip_cache.safetensors").is_file() and "tip_alpha" in results
    elif example == "linear_probe.yaml":  # no step either: the head is the result
        assert (tmp_path / "probe_head.safetensors").is_file() and "probe_val_accuracy" in results
    elif example == "hp_search.yaml":  # two trials on val, then the best retrained and tested
        assert (tmp_path / "hp_search" / "trials.md").read_text().count("| complete |") == 2
        assert (tmp_path / "hp_search" / "best.yaml").is_file()
    else:
        assert (tmp_path / "trainer_log.jsonl").is_file()
    if example == "abs.yaml":
        assert any(unit["kept"] for unit in read_json(tmp_path / "abs_selection.json")["units"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "example, model, extra",
    [
        ("siglip2_lora.yaml", "tiny-siglip", [*CLASSIFICATION, "classification_loss=sigmoid"]),
        ("siglip_i2t.yaml", "tiny-siglip", ["max_samples=32"]),
        ("metaclip2_adapter.yaml", "tiny-metaclip2", CLASSIFICATION),
        ("chinese_clip_vpt.yaml", "tiny-chinese-clip", CLASSIFICATION),
    ],
)
def test_family_examples_run_with_the_familys_tiny_checkpoint(tmp_path, example, model, extra):
    tiny = [key for key in TINY if not key.startswith(("model_name_or_path=", "image_size="))]
    model_path = f"model_name_or_path={DATA_DIR / 'models' / model}"
    out = run_cli(
        ["train", str(ROOT / "examples" / "clip" / example), f"output_dir={tmp_path}", model_path, *tiny, *extra]
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert ("eval_i2t_r1" if "i2t" in example else "eval_accuracy") in read_json(tmp_path / "all_results.json")


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    """FORCE_TORCHRUN: LLaMA-Factory re-runs its launcher.py under torchrun; the hook routes both ranks.

    With ABS, both ranks select the same units (the callback compares them across ranks) and DDP keeps working
    after parameters are frozen mid-run."""
    out = run_cli(
        [
            "train",
            str(ROOT / "examples" / "clip" / "abs.yaml"),
            f"output_dir={tmp_path}",
            *TINY,
            "num_shots=4",
            "per_device_eval_batch_size=32",
            "num_train_epochs=2",
        ],
        env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"},
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "Process rank: 0, world size: 2" in log and "Process rank: 1, world size: 2" in log
    state = read_json(tmp_path / "trainer_state.json")
    assert state["global_step"] == 6  # 2 epochs of 40 images / (8 per device x 2 ranks), rounded up
    assert "abs: the selection is identical on all 2 ranks." in log
    assert read_json(tmp_path / "abs_selection.json")["step"] == 3
    assert (tmp_path / "model.safetensors").is_file() and "eval_accuracy" in read_json(tmp_path / "all_results.json")


@pytest.mark.slow
def test_llm_stage_reaches_llamafactory_unchanged(tmp_path):
    """`stage: sft` goes to LLaMA-Factory's run_sft, failing exactly as it does without the plugin."""
    (tmp_path / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    (tmp_path / "tiny.json").write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"}]))
    config = {
        "stage": "sft",
        "do_train": True,
        "model_name_or_path": str(tmp_path / "no-such-model"),
        "dataset": "tiny",
        "dataset_dir": str(tmp_path),
        "template": "default",
        "finetuning_type": "lora",
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
    }
    (tmp_path / "sft.yaml").write_text(json.dumps(config))
    with_plugin = run_cli(["train", str(tmp_path / "sft.yaml")], cwd=tmp_path)
    without = run_cli(["train", str(tmp_path / "sft.yaml")], env={"LLAMAFACTORY_CLIP_DISABLE": "1"}, cwd=tmp_path)
    assert with_plugin.returncode != 0 and without.returncode != 0
    assert "llamafactory/train/sft/workflow.py" in with_plugin.stderr  # LLaMA-Factory's own SFT code ran
    assert "clip_finetune" not in with_plugin.stderr.split("llamafactory/train/tuner.py")[-1]
    last = lambda text: text.strip().splitlines()[-1]  # noqa: E731
    assert last(with_plugin.stderr) == last(without.stderr)
    assert not os.path.exists(tmp_path / "out" / "all_results.json")


@pytest.mark.slow
@pytest.mark.parametrize("example", ["lora.yaml", "adapter.yaml", "vpt_deep.yaml"])
def test_peft_methods_under_torchrun_two_processes(tmp_path, example):
    out = run_cli(
        [
            "train",
            str(ROOT / "examples" / "clip" / example),
            f"output_dir={tmp_path}",
            *TINY,
            "num_shots=4",
            "per_device_eval_batch_size=32",
        ],
        env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "OMP_NUM_THREADS": "1"},
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "Process rank: 1, world size: 2" in log
    if example == "adapter.yaml":  # the frozen image tower's feature cache: each rank encodes half, all gathered
        for rank in (0, 1):
            assert f"feature cache: rank {rank} encoded its 20 of 40 training images x 10 augmented views" in log
        assert "feature cache: 40 images x 10 augmented views" in log
    assert (tmp_path / "adapter_model.safetensors").is_file() and "eval_accuracy" in read_json(
        tmp_path / "all_results.json"
    )


@pytest.mark.slow
def test_the_v1_launcher_refuses_the_clip_stage_with_a_clear_error(tmp_path):
    done = run_cli(["train", str(ROOT / "examples/clip/quickstart.yaml")], env={"USE_V1": "1"})
    assert done.returncode != 0
    assert "stage: clip runs on LLaMA-Factory's v0 launcher" in done.stderr + done.stdout


def test_config_stage_reads_the_yaml_and_the_overrides(tmp_path):
    from llamafactory.clip_finetune.integration.tuner import config_stage

    (tmp_path / "a.yaml").write_text("stage: clip\n")
    assert config_stage([str(tmp_path / "a.yaml")]) == "clip"
    assert config_stage([str(tmp_path / "a.yaml"), "stage=sft"]) == "sft"
    assert config_stage(["--stage", "clip"]) == "clip" and config_stage(["x.yaml"]) is None


@pytest.mark.parametrize("args", [["--stage", "clip", "-h"], {"stage": "clip", "dataset": "x", "--help": None}])
def test_help_for_the_clip_stage_lists_its_own_keys(args, capsys):
    from llamafactory.train.tuner import run_exp

    run_exp(args)
    out = capsys.readouterr().out
    assert "llamafactory-cli train <config.yaml> (stage: clip)" in out
    assert "--finetuning_type" in out and "--tip_alpha" in out and "--image_background" in out
    assert "--adapter_name_or_path" not in out and "--cutoff_len" not in out  # none of the LLM stages' keys
