"""The Dassl-style configs that xtune (opea-project/GenAIComps, comps/finetuning/src/integrations/xtune) and CoOp
(KaiyangZhou/CoOp) ship: every key is translated, or accepted and reported as not used with a reason, and keys the
files leave out take Dassl's / xtune's defaults. The key sets below are written from those files (not vendored)."""

import subprocess
import sys

import pytest
import yaml
from conftest import DATA_DIR, TINY_CLIP

from llamafactory.clip_finetune.dassl import DasslConfigError, translate_files
from llamafactory.clip_finetune.dassl.__main__ import main
from llamafactory.clip_finetune.train.arguments import check_clip_args


CLIP_INPUT = {
    "SIZE": "(224, 224)",
    "INTERPOLATION": "bicubic",
    "PIXEL_MEAN": [0.48145466, 0.4578275, 0.40821073],
    "PIXEL_STD": [0.26862954, 0.26130258, 0.27577711],
    "TRANSFORMS": ["random_resized_crop", "random_flip", "normalize"],
}


def trainer_file(epochs=50, lr=0.02, backbone="ViT-B/16", name="sgd", warmup=1, extra=None, batch=32):
    config = {
        "DATALOADER": {"TRAIN_X": {"BATCH_SIZE": batch}, "TEST": {"BATCH_SIZE": 100}, "NUM_WORKERS": 4},
        "INPUT": dict(CLIP_INPUT),
        "OPTIM": {
            "NAME": name,
            "LR": str(lr),  # `2e-2` style values reach yacs as strings
            "MAX_EPOCH": epochs,
            "LR_SCHEDULER": "cosine",
            "WARMUP_EPOCH": warmup,
            "WARMUP_TYPE": "constant",
            "WARMUP_CONS_LR": "1e-5",
        },
        "TRAIN": {"PRINT_FREQ": 1},
        "MODEL": {"BACKBONE": {"NAME": backbone}},
    }
    for key, value in (extra or {}).items():
        node = config
        *parents, last = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return config


CTX = {"TRAINER.COOP.CTX_INIT": "a photo of a"}
XTUNE = {
    "vit_b16": trainer_file(extra=CTX),
    "vit_b16_tip": trainer_file(
        epochs=20,
        lr="4e-3",
        name="adamw",
        warmup=0,
        batch=64,
        extra={
            **CTX,
            "TRAINER.TIP.LOAD_CACHE": True,
            "TRAINER.TIP.beta": 1.0,
            "TRAINER.TIP.alpha": 3.0,
            "TRAINER.TIP.AUGMENT_EPOCH": 10,
            "TRAINER.TIP.search_best": True,
            "TRAINER.TIP.NEW": False,
            "TRAINER.TIP.NEW_DATASET": False,
        },
    ),
    "vit_b16_bias": trainer_file(extra={"BIAS.BIAS_TERMS_EXCLUDE": ["layer_norm", "layernorm"]}),
    "vit_b16_bias_abs": trainer_file(
        epochs=200,
        warmup=10,
        extra={"MODEL.ABS": True, "MODEL.ABS_TOP": True, "MODEL.ABS_GROUP": False, "MODEL.ABS_KEEP": 5},
    ),
    "vit_b16_ori_abs_2": trainer_file(
        epochs=200,
        lr="1e-5",
        extra={
            "MODEL.ABS": True,
            "MODEL.ABS_TOP": True,
            "MODEL.ABS_GROUP": True,
            "MODEL.ABS_GROUP_NAME": ["k_proj", "v_proj", "q_proj"],
            "MODEL.ABS_KEEP": 5,
        },
    ),
    "vit_b16_lfa": trainer_file(
        extra={
            **CTX,
            "TRAINER.LFA.unsupervised": True,
            "TRAINER.LFA.FIVE_CROP": True,
            "TRAINER.LFA.beta_procrustes": 0.9,
            "TRAINER.LFA.METHOD": 1,
            "TRAINER.LFA.search_best": False,
        }
    ),
    "vit_b16_opt": trainer_file(
        epochs=100,
        warmup=5,
        extra={
            **CTX,
            "optuna_cfg.n_trials": 30,
            "optuna_cfg.n_warmup_steps": 15,
            "optuna_cfg.opt_params": [{"OPTIM.LR": {"range": [1e-9, 1e-8], "log": False}}],
            "optuna_cfg.sampler.name": "TPESampler",
        },
    ),
    "vit_l14_prompt": trainer_file(epochs=200, lr=0.002, backbone="ViT-L/14", extra=CTX),
    # xtune's VPT reads these from the CoOp section (its defaults are 4, 0.0, True)
    "vpt_keys": {"TRAINER": {"COOP": {"N_PLN": 8, "N_PDT": 0.1, "PMT_DEEP": False}}},
    "tip_keys": {
        "TRAINER": {"TIP": {"search_scale": [12, 5], "search_step": [200, 20], "CACHE_DIR": "./caches/pets"}},
        "OPTIM": {"SGD_DAMPNING": 0, "SGD_NESTEROV": False, "ADAM_BETA1": 0.9, "ADAM_BETA2": 0.999},
    },
    "dataset_oxford_pets": {"DATASET": {"NAME": "OxfordPets"}},
    "dataset_flickr30k": {"DATASET": {"NAME": "ITC_Flickr"}},
}
COOP = {
    "CoOp/vit_b16_ep50_ctxv1": trainer_file(lr=0.002, extra=CTX) | {"TRAIN": {"PRINT_FREQ": 5}},
    "CoOp/vit_b32": trainer_file(epochs=200, lr=0.002, backbone="ViT-B/32"),
    "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1": trainer_file(
        epochs=10,
        lr=0.002,
        batch=1,
        extra={"TRAINER.COCOOP.N_CTX": 4, "TRAINER.COCOOP.CTX_INIT": "a photo of a", "TRAINER.COCOOP.PREC": "fp16"},
    ),
    "datasets/imagenet": {"DATASET": {"NAME": "ImageNet"}},
    "datasets/caltech101": {"DATASET": {"NAME": "Caltech101"}},
}
RESNET = {"CoOp/rn50": trainer_file(epochs=200, lr=0.002, backbone="RN50")}


def write(tmp_path, name, config):
    path = tmp_path / (name.replace("/", "_") + ".yaml")
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("name", list(XTUNE) + list(COOP) + list(RESNET))
def test_public_files_translate_and_print(tmp_path, name, capsys):
    path = write(tmp_path, name, {**XTUNE, **COOP, **RESNET}[name])
    translate_files(path)
    assert main([path]) == 0  # `python -m llamafactory.clip_finetune.dassl` (run as a command below)
    loaded = yaml.safe_load(capsys.readouterr().out)  # the comments stay comments
    assert loaded["stage"] == "clip"


def test_the_print_command_runs_as_a_module(tmp_path):
    path = write(tmp_path, "tip", XTUNE["vit_b16_tip"])
    out = subprocess.run(
        [sys.executable, "-m", "llamafactory.clip_finetune.dassl", path], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "# not used: TRAINER.COOP.CTX_INIT" in out.stdout and "tip_alpha: 3.0" in out.stdout


def test_xtune_tip_file_values_and_what_is_not_used(tmp_path):
    t = translate_files(write(tmp_path, "tip", XTUNE["vit_b16_tip"]))
    expect = {
        "finetuning_type": "tip",
        "clip_optim": "adamw",
        "learning_rate": 4e-3,
        "num_train_epochs": 20,
        "per_device_train_batch_size": 64,
        "warmup_epochs": 0,
        "tip_alpha": 3.0,
        "tip_beta": 1.0,
        "tip_load_cache": True,
        "tip_search_best": True,
        "tip_search_scale": [12.0, 5.0],  # xtune's defaults: the file leaves them out
        "tip_search_step": [200, 20],
        "weight_decay": 5e-4,  # Dassl's
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "crop_scale": [0.08, 1.0],
    }
    assert {k: t.values[k] for k in expect} == expect
    assert any(
        key.startswith("TRAINER.COOP.CTX_INIT") and "TRAINER.NAME is CoOp" in why for key, why in t.unused.items()
    )


def test_xtune_vpt_keys_choose_prompt_and_its_defaults_apply_to_a_prompt_run(tmp_path):
    t = translate_files(write(tmp_path, "vpt", XTUNE["vpt_keys"]))
    assert t.values == {"finetuning_type": "prompt", "prompt_length": 8, "prompt_dropout": 0.1, "prompt_deep": False}
    # the file has no VPT keys, the run is a prompt run: xtune's defaults, not this stage's (5, shallow)
    base = translate_files(write(tmp_path, "base", XTUNE["vit_b16"]), method="prompt").values
    assert (base["prompt_length"], base["prompt_dropout"], base["prompt_deep"]) == (4, 0.0, True)
    assert (
        "finetuning_type" not in base
        and "prompt_length" not in translate_files(write(tmp_path, "b2", XTUNE["vit_b16"])).values
    )


def test_xtune_abs_and_optimizer_keys(tmp_path):
    abs_values = translate_files(write(tmp_path, "abs", XTUNE["vit_b16_bias_abs"])).values
    assert abs_values["abs"] is True and abs_values["abs_group"] is False and abs_values["abs_keep"] == 5
    assert abs_values["abs_group_name"] == ["k_proj", "v_proj", "q_proj", "out_proj", "layrnorm", "mlp"]
    t = translate_files(write(tmp_path, "keys", XTUNE["tip_keys"]))
    assert t.values["tip_cache_dir"] == "./caches/pets" and t.values["sgd_dampening"] == 0.0
    assert t.values["clip_optim"] == "adam" and t.values["learning_rate"] == 0.0003  # Dassl's OPTIM defaults
    assert t.values["lr_scheduler_type"] == "constant" and t.values["epoch_lr_schedule"] is True  # single_step


def test_lfa_and_optuna_keys_are_reported_not_used(tmp_path):
    t = translate_files(
        write(tmp_path, "lfa", XTUNE["vit_b16_lfa"]) + "," + write(tmp_path, "o", XTUNE["vit_b16_opt"])
    )
    reasons = " ".join(f"{k}: {v}" for k, v in t.unused.items())
    assert "TRAINER.LFA.beta_procrustes" in reasons and "LFA" in reasons
    assert "optuna_cfg.sampler.name" in reasons and "test split" in reasons


def test_a_resnet_backbone_prints_but_does_not_run_unless_a_model_is_given(tmp_path):
    path = write(tmp_path, "rn50", RESNET["CoOp/rn50"])
    t = translate_files(path)
    assert "model_name_or_path" not in t.values and "ResNet CLIP" in t.blocked["model_name_or_path"]
    run = {"stage": "clip", "do_train": True, "dataset": "fashion_mnist_train", "dataset_dir": str(DATA_DIR)}
    run["output_dir"] = str(tmp_path / "o")
    with pytest.raises(DasslConfigError, match=r"MODEL.BACKBONE.NAME in .*ResNet CLIP.*Set `model_name_or_path`"):
        check_clip_args({"clip_config": path, **run})
    check_clip_args({"clip_config": path, **run, "model_name_or_path": str(TINY_CLIP), "image_size": 32})


def test_single_step_with_a_step_inside_the_run_is_refused(tmp_path):
    config = {"OPTIM": {"LR_SCHEDULER": "single_step", "STEPSIZE": "(30,)", "MAX_EPOCH": 50}}
    with pytest.raises(DasslConfigError, match=r"single_step with OPTIM.STEPSIZE 30 decays within the 50 epochs"):
        translate_files(write(tmp_path, "s", config))
    config["OPTIM"]["STEPSIZE"] = "(-1,)"
    assert translate_files(write(tmp_path, "s", config)).values["lr_scheduler_type"] == "constant"


def test_coop_dataset_and_cocoop_files(tmp_path):
    t = translate_files(write(tmp_path, "imagenet", COOP["datasets/imagenet"]))
    assert t.values["dataset"] == "image_net_train" and t.values["templates"] == ["a photo of a {}."]
    c = translate_files(write(tmp_path, "cocoop", COOP["CoCoOp/vit_b16_c4_ep10_batch1_ctxv1"]))
    assert c.values["per_device_train_batch_size"] == 1
    assert all("CoCoOp" in why for key, why in c.unused.items() if "COCOOP" in key)
