"""Dassl/CoOp-style configs: every key's translation, the per-epoch schedule against Dassl, and clear errors."""

import math
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, base_args, read_json
from llamafactory.train.tuner import run_exp
from transformers import TrainerCallback

from llamafactory.clip_finetune.dassl import DasslConfigError, translate_files
from llamafactory.clip_finetune.dassl.translate import translate
from llamafactory.clip_finetune.hparams import ClipFinetuningArguments
from llamafactory.clip_finetune.train.arguments import get_clip_train_args
from llamafactory.clip_finetune.train.schedule import epoch_lr_scheduler


BASE = {
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 100,
    "dataloader_num_workers": 4,
    "image_size": 224,
    "interpolation": "bicubic",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "train_transforms": ["random_resized_crop", "random_flip", "normalize"],
    "clip_optim": "sgd",
    "learning_rate": 0.02,
    "num_train_epochs": 50,
    "lr_scheduler_type": "cosine",
    "epoch_lr_schedule": True,
    "warmup_epochs": 1,
    "warmup_type": "constant",
    "warmup_cons_lr": 1e-5,
    "logging_steps": 1,
    "model_name_or_path": "openai/clip-vit-base-patch16",
    # Dassl's defaults for the OPTIM, INPUT and MODEL keys the file leaves out
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "sgd_dampening": 0.0,
    "sgd_nesterov": False,
    "rmsprop_alpha": 0.99,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "warmup_min_lr": 1e-5,
    "warmup_recount": True,
    "crop_scale": [0.08, 1.0],
    # xtune's ABS defaults (its Dassl copy): MODEL is a section of the file
    "abs": False,
    "abs_top": True,
    "abs_group": False,
    "abs_group_name": ["k_proj", "v_proj", "q_proj", "out_proj", "layrnorm", "mlp"],
    "abs_keep": 5,
}


def test_packaged_base_file_translates_every_key():
    translation = translate_files("vit_b16")
    assert translation.values == BASE
    assert isinstance(translation.values["warmup_cons_lr"], float)  # `1e-5` is a string to YAML 1.1
    assert translation.source["image_size"].startswith("INPUT.SIZE in ")


def test_method_sections_translate():
    values = translate_files(["vit_b16", str(ROOT / "examples/clip/dassl/abs.yaml")]).values
    assert {k: values[k] for k in ("abs", "abs_top", "abs_group", "abs_group_name", "abs_keep")} == {
        "abs": True,
        "abs_top": True,
        "abs_group": True,
        "abs_group_name": ["k_proj", "v_proj", "q_proj"],
        "abs_keep": 5,
    }
    vpt = translate_files(str(ROOT / "examples/clip/dassl/vpt_deep.yaml")).values
    assert vpt == {"finetuning_type": "prompt", "prompt_length": 5, "prompt_deep": True, "prompt_dropout": 0.0}
    adapter = translate_files(str(ROOT / "examples/clip/dassl/adapter.yaml")).values
    assert adapter == {
        "finetuning_type": "adapter",
        "adapter_reduction": 4,
        "adapter_ratio": 0.2,
        "adapter_target": "vision",
    }
    tip = translate_files(str(ROOT / "examples/clip/dassl/tip.yaml")).values
    assert tip == {
        "finetuning_type": "tip",
        "tip_load_cache": True,
        "tip_beta": 1.0,
        "tip_alpha": 3.0,
        "tip_augment_epoch": 10,
        "tip_search_best": True,
        "tip_fixed_cache": False,
        "tip_new_dataset": False,
        "tip_search_scale": [12.0, 5.0],  # xtune's defaults for the keys the file leaves out
        "tip_search_step": [200, 20],
    }
    bias = translate_files(str(ROOT / "examples/clip/dassl/bias.yaml")).values
    assert bias == {
        "finetuning_type": "bias",
        "bias_terms": ["layer_norm", "layernorm"],
        "bias_terms_exclude": ["layernorm"],
    }


def test_other_common_dassl_keys_translate():
    config = {
        "OPTIM": {
            "NAME": "rmsprop",
            "WEIGHT_DECAY": 0.01,
            "MOMENTUM": 0.5,
            "WARMUP_MIN_LR": 1e-6,
            "WARMUP_RECOUNT": False,
            "WARMUP_TYPE": "linear",
        },
        "DATASET": {"NAME": "OxfordPets", "ROOT": "/data/coop", "NUM_SHOTS": 16, "SUBSAMPLE_CLASSES": "base"},
        "SEED": 3,
        "OUTPUT_DIR": "out/x",
        "TRAIN": {"CHECKPOINT_FREQ": 1},
        "TEST": {"FINAL_MODEL": "last_step"},
    }
    assert translate(config).values == {
        "clip_optim": "rmsprop",
        "weight_decay": 0.01,
        "momentum": 0.5,
        "warmup_min_lr": 1e-6,
        "warmup_recount": False,
        "warmup_type": "linear",
        "dataset": "oxford_pets_train",
        "val_dataset": "oxford_pets_val",
        "eval_dataset": "oxford_pets_test",
        "templates": ["a photo of a {}, a type of pet."],
        "dataset_dir": "/data/coop",
        "num_shots": 16,
        "subsample_classes": "base",
        "seed": 3,
        "output_dir": "out/x",
        "save_strategy": "epoch",
    }
    assert translate({"DATASET": {"NUM_SHOTS": -1}}).values == {}  # Dassl's -1: every image
    assert translate({"INPUT": {"RRCROP_SCALE": "(0.5, 1.0)"}}).values == {"crop_scale": [0.5, 1.0]}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"MODEL": {"ABS_KEPP": 5}}, r"unknown key MODEL.ABS_KEPP \(did you mean MODEL.ABS_KEEP\?\)"),
        ({"OPTIM": {"LR": 0.1, "MAX_EPOHC": 3}}, r"unknown key OPTIM.MAX_EPOHC \(did you mean OPTIM.MAX_EPOCH\?\)"),
        ({"MODEL": {"ABS_KEEP": "five"}}, r"MODEL.ABS_KEEP must be an integer, got 'five'"),
        ({"MODEL": {"ABS": "maybe"}}, r"MODEL.ABS must be True or False"),
        ({"INPUT": {"SIZE": "(224, 192)"}}, r"INPUT.SIZE must be a square size"),
        ({"INPUT": {"RRCROP_SCALE": "(0.5,)"}}, r"INPUT.RRCROP_SCALE must be an area range"),
        ({"OPTIM": {"NAME": "lamb"}}, r"OPTIM.NAME: `lamb` is not one of sgd, adam, adamw, rmsprop"),
        ({"OPTIM": {"LR_SCHEDULER": "multi_step"}}, r"`multi_step` is not supported"),
        ({"OPTIM": {"STAGED_LR": True}}, r"staged learning rates .* are not supported"),
        ({"TRAINER": {"TIP": {"alpha": 1.0}, "VPT": {"DEEP": True}}}, r"one file describes one method"),
        ({"TRAIN": {"CHECKPOINT_FREQ": 5}}, r"saving every 5 epochs"),
        ({"TRAINER": {"TIP": {"NEW": "yes"}}}, r"TRAINER.TIP.NEW must be True or False"),
        ({"TRAINER": {"VPT": {"DEPTH": 3}}}, r"unknown key TRAINER.VPT.DEPTH \(did you mean TRAINER.VPT.DEEP\?\)"),
        ({"TRAINER": {"ADAPTER": {"TARGET": "all"}}}, r"TRAINER.ADAPTER.TARGET: `all` is not one of"),
    ],
)
def test_bad_keys_and_values_are_clear_errors(config, message):
    with pytest.raises(DasslConfigError, match=message):
        translate(config, "cfg.yaml")


def test_unknown_packaged_name_lists_the_shipped_ones():
    with pytest.raises(DasslConfigError, match=r"no packaged config `vit_b32` \(shipped: vit_b16\)"):
        translate_files("vit_b32")


def dassl_reference(epochs, base_lr, max_epoch, warmup, kind, cons_lr, min_lr, recount):
    """Dassl's scheduler stepped once per epoch: torch's CosineAnnealingLR wrapped by Dassl's warm-up logic."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))
    if not recount:
        cosine.last_epoch = warmup
    wrapper_epoch, lrs = 0, []

    def warm_lr(epoch):
        if kind == "constant":
            return cons_lr
        return min_lr if epoch == 0 else base_lr * epoch / warmup

    current = warm_lr(0)
    for _ in range(epochs):
        lrs.append(current)
        if wrapper_epoch >= warmup:
            optimizer.step()  # a training epoch's steps come first (no gradient here: nothing moves)
            cosine.step()
            current = cosine.get_last_lr()[0]
        else:
            wrapper_epoch += 1
            current = warm_lr(wrapper_epoch) if wrapper_epoch < warmup else cosine.get_last_lr()[0]
        for group in optimizer.param_groups:
            group["lr"] = current
    return lrs


@pytest.mark.parametrize(
    "kind, recount", [("constant", True), ("constant", False), ("linear", True), ("linear", False)]
)
def test_epoch_schedule_matches_dassl_at_step_level(kind, recount):
    max_epoch, steps_per_epoch, warmup, base_lr = 8, 5, 2, 0.02
    args = ClipFinetuningArguments(
        epoch_lr_schedule=True,
        warmup_epochs=warmup,
        warmup_type=kind,
        warmup_cons_lr=1e-5,
        warmup_min_lr=1e-4,
        warmup_recount=recount,
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = epoch_lr_scheduler(optimizer, args, base_lr, steps_per_epoch, max_epoch, "cosine")
    reference = dassl_reference(max_epoch, base_lr, max_epoch, warmup, kind, 1e-5, 1e-4, recount)
    for step in range(max_epoch * steps_per_epoch):
        expected = reference[step // steps_per_epoch]
        assert math.isclose(optimizer.param_groups[0]["lr"], expected, rel_tol=1e-9, abs_tol=1e-12), (step, expected)
        optimizer.step()
        scheduler.step()


class OptimizerProbe(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


def test_clip_config_run_uses_dassl_optimizer_schedule_and_explicit_overrides(tmp_path):
    probe = OptimizerProbe()
    args = base_args(
        tmp_path,
        clip_config="vit_b16",
        image_size=32,
        num_train_epochs=3,
        logging_steps=1,
        per_device_train_batch_size=10,
        dataloader_num_workers=0,
        warmup_epochs=1,
    )
    args.pop("learning_rate")  # the Dassl LR (0.02) applies
    run_exp(args, callbacks=[probe])
    assert isinstance(probe.optimizer, torch.optim.SGD)
    group = probe.optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 5e-4
    logged = {
        log["step"]: log["learning_rate"]
        for log in read_json(tmp_path / "trainer_state.json")["log_history"]
        if "learning_rate" in log
    }
    # 20 images / 10 per step = 2 steps an epoch; the Trainer logs the LR used by each step
    expected = dassl_reference(3, 0.02, 3, 1, "constant", 1e-5, 1e-5, True)
    assert [logged[s] for s in range(1, 7)] == pytest.approx([expected[(s - 1) // 2] for s in range(1, 7)])


def test_argv_clip_config_with_override(tmp_path):
    argv = [
        "--stage",
        "clip",
        "--clip_config",
        "vit_b16",
        "--dataset",
        "fashion_mnist_train",
        "--do_train",
        "--output_dir",
        str(tmp_path),
        "--learning_rate",
        "0.5",
        "--model_name_or_path",
        "ViT-B/32",
    ]
    model_args, data_args, training_args, finetuning_args = get_clip_train_args(argv)
    assert training_args.learning_rate == 0.5 and model_args.model_name_or_path == "openai/clip-vit-base-patch32"
    assert training_args.num_train_epochs == 50 and data_args.image_size == 224 and finetuning_args.clip_optim == "sgd"


def test_print_command_writes_a_loadable_llamafactory_yaml():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "llamafactory.clip_finetune.dassl",
            "vit_b16",
            str(ROOT / "examples/clip/dassl/abs.yaml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    values = yaml.safe_load(out.stdout)
    assert values == {
        "stage": "clip",
        **BASE,
        "abs": True,
        "abs_top": True,
        "abs_group": True,
        "abs_group_name": ["k_proj", "v_proj", "q_proj"],
        "abs_keep": 5,
    }
    assert "# OPTIM.LR in " in out.stdout


def test_dassl_defaults_apply_once_after_merging_files(tmp_path):
    (tmp_path / "a.yaml").write_text("OPTIM:\n  NAME: sgd\n  WEIGHT_DECAY: 0.0\n  MOMENTUM: 0.0\n")
    (tmp_path / "b.yaml").write_text("OPTIM:\n  NAME: adamw\n  LR: 0.001\n")
    values = translate_files(f"{tmp_path / 'a.yaml'},{tmp_path / 'b.yaml'}").values
    assert values["clip_optim"] == "adamw" and values["weight_decay"] == 0.0 and values["momentum"] == 0.0


def test_epoch_schedule_counts_epochs_like_the_trainer_with_gradient_accumulation(tmp_path):
    """50 images in batches of 10 with 2 accumulation steps: 3 optimizer steps an epoch (the last one short)."""
    args = base_args(
        tmp_path,
        num_shots=5,
        per_device_train_batch_size=10,
        gradient_accumulation_steps=2,
        num_train_epochs=4,
        clip_optim="sgd",
        learning_rate=1.0,
        epoch_lr_schedule=True,
        lr_scheduler_type="cosine",
        do_eval=False,
    )
    run_exp(args)
    logged = [
        log["learning_rate"]
        for log in read_json(tmp_path / "trainer_state.json")["log_history"]
        if "learning_rate" in log
    ]
    expected = [(1 + math.cos(math.pi * epoch / 4)) / 2 for epoch in range(4) for _ in range(3)]
    assert logged == pytest.approx(expected)


def test_argv_clip_config_without_a_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--clip_config needs a file"):
        get_clip_train_args(["--stage", "clip", "--do_train", "--output_dir", str(tmp_path), "--clip_config"])
