"""Translate a Dassl/CoOp yacs-style yaml into the clip stage's arguments, key by key, with clear errors.

Every accepted key is in ``SCHEMA``: its dotted path, the argument it sets and the type its value must have.
"""

import ast
import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..data.templates import COOP_TEMPLATES
from ..hparams.model_args import resolve_backbone


class DasslConfigError(ValueError):
    pass


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not re.fullmatch(r"-?\d+", str(value).strip()):
        raise TypeError("an integer")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a number")
    try:
        return float(value)  # YAML 1.1 reads `1e-5` as a string
    except (TypeError, ValueError):
        raise TypeError("a number") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeError("True or False")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _strs(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("a list of strings")
    return list(value)


def _floats3(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 3:
        raise TypeError("a list of 3 numbers")
    return [_float(v) for v in value]


def _crop_scale(value: Any) -> list[float]:
    """`(0.08, 1.0)` arrives as a string or a list."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise TypeError("an area range like (0.08, 1.0)") from None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError("an area range like (0.08, 1.0)")
    return [_float(v) for v in value]


def _size(value: Any) -> int:
    """`(224, 224)` arrives as a string; the clip stage takes square inputs."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise TypeError("a size like (224, 224)") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        if value[0] != value[1]:
            raise TypeError("a square size (H == W)")
        return value[0]
    raise TypeError("a size like (224, 224)")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


@dataclass
class Translation:
    """Arguments and, for each, the Dassl key it came from (``source``)."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.source[key] = source


Rule = Callable[[Translation, Any, str], None]


def _to(key: str, kind: Callable[[Any], Any]) -> tuple[Callable[[Any], Any], Rule]:
    return kind, lambda t, v, path: t.set(key, v, path)


def _optim_name(t: Translation, value: str, path: str) -> None:
    if value not in ("sgd", "adam", "adamw", "rmsprop"):
        raise DasslConfigError(f"{path}: `{value}` is not one of sgd, adam, adamw, rmsprop.")
    t.set("clip_optim", value, path)


def _scheduler(t: Translation, value: str, path: str) -> None:
    if value != "cosine":
        raise DasslConfigError(f"{path}: `{value}` is not supported; the clip stage implements Dassl's `cosine`.")
    t.set("lr_scheduler_type", "cosine", path)
    t.set("epoch_lr_schedule", True, path)


def _warmup_epoch(t: Translation, value: int, path: str) -> None:
    t.set("warmup_epochs", max(value, 0), path)


def _backbone(t: Translation, value: str, path: str) -> None:
    try:
        t.set("model_name_or_path", resolve_backbone(value), path)
    except ValueError as err:
        raise DasslConfigError(f"{path}: {err}") from None


def _dataset_name(t: Translation, value: str, path: str) -> None:
    base = _snake(value)
    for key, split in (("dataset", "train"), ("val_dataset", "val"), ("eval_dataset", "test")):
        t.set(key, f"{base}_{split}", path)
    if value in COOP_TEMPLATES:
        t.set("templates", COOP_TEMPLATES[value], path)


def _num_shots(t: Translation, value: int, path: str) -> None:
    if value > 0:  # Dassl's -1 (or 0): all images
        t.set("num_shots", value, path)


def _subsample(t: Translation, value: str, path: str) -> None:
    if value not in ("all", "base", "new"):
        raise DasslConfigError(f"{path}: `{value}` is not one of all, base, new.")
    t.set("subsample_classes", value, path)


def _checkpoint_freq(t: Translation, value: int, path: str) -> None:
    if value > 1:
        raise DasslConfigError(f"{path}: saving every {value} epochs has no Trainer equivalent; set save_steps.")
    t.set("save_strategy", "epoch" if value == 1 else "no", path)


def _final_model(t: Translation, value: str, path: str) -> None:
    if value != "last_step":
        raise DasslConfigError(f"{path}: only `last_step` is supported (the final model is evaluated).")


def _method_key(finetuning_type: str, key: str) -> Rule:
    """A key of a method section also sets the method (BIAS.* -> bias, TRAINER.VPT.* -> prompt, ...)."""

    def rule(t: Translation, value: Any, path: str) -> None:
        t.set("finetuning_type", finetuning_type, path.rpartition(".")[0])
        t.set(key, value, path)

    return rule


def _adapter_target(t: Translation, value: str, path: str) -> None:
    if value not in ("vision", "text", "both"):
        raise DasslConfigError(f"{path}: `{value}` is not one of vision, text, both.")
    _method_key("adapter", "adapter_target")(t, value, path)


SCHEMA: dict[str, tuple[Callable[[Any], Any], Rule]] = {
    "DATALOADER.TRAIN_X.BATCH_SIZE": _to("per_device_train_batch_size", _int),
    "DATALOADER.TEST.BATCH_SIZE": _to("per_device_eval_batch_size", _int),
    "DATALOADER.NUM_WORKERS": _to("dataloader_num_workers", _int),
    "INPUT.SIZE": _to("image_size", _size),
    "INPUT.INTERPOLATION": _to("interpolation", _str),
    "INPUT.PIXEL_MEAN": _to("image_mean", _floats3),
    "INPUT.PIXEL_STD": _to("image_std", _floats3),
    "INPUT.TRANSFORMS": _to("train_transforms", _strs),
    "INPUT.RRCROP_SCALE": _to("crop_scale", _crop_scale),
    "OPTIM.NAME": (_str, _optim_name),
    "OPTIM.LR": _to("learning_rate", _float),
    "OPTIM.MAX_EPOCH": _to("num_train_epochs", _int),
    "OPTIM.LR_SCHEDULER": (_str, _scheduler),
    "OPTIM.WARMUP_EPOCH": (_int, _warmup_epoch),
    "OPTIM.WARMUP_TYPE": _to("warmup_type", _str),
    "OPTIM.WARMUP_CONS_LR": _to("warmup_cons_lr", _float),
    "OPTIM.WARMUP_MIN_LR": _to("warmup_min_lr", _float),
    "OPTIM.WARMUP_RECOUNT": _to("warmup_recount", _bool),
    "OPTIM.WEIGHT_DECAY": _to("weight_decay", _float),
    "OPTIM.MOMENTUM": _to("momentum", _float),
    "TRAIN.PRINT_FREQ": _to("logging_steps", _int),
    "TRAIN.CHECKPOINT_FREQ": (_int, _checkpoint_freq),
    "TEST.FINAL_MODEL": (_str, _final_model),
    "MODEL.BACKBONE.NAME": (_str, _backbone),
    "MODEL.ABS": _to("abs", _bool),
    "MODEL.ABS_TOP": _to("abs_top", _bool),
    "MODEL.ABS_GROUP": _to("abs_group", _bool),
    "MODEL.ABS_GROUP_NAME": _to("abs_group_name", _strs),
    "MODEL.ABS_KEEP": _to("abs_keep", _int),
    "BIAS.BIAS_TERMS": (_strs, _method_key("bias", "bias_terms")),
    "BIAS.BIAS_TERMS_EXCLUDE": (_strs, _method_key("bias", "bias_terms_exclude")),
    "TRAINER.VPT.PROMPT_LENGTH": (_int, _method_key("prompt", "prompt_length")),
    "TRAINER.VPT.DEEP": (_bool, _method_key("prompt", "prompt_deep")),
    "TRAINER.VPT.DROPOUT": (_float, _method_key("prompt", "prompt_dropout")),
    "TRAINER.VPT.PROJECT": (_int, _method_key("prompt", "prompt_project")),
    "TRAINER.ADAPTER.REDUCTION": (_int, _method_key("adapter", "adapter_reduction")),
    "TRAINER.ADAPTER.RATIO": (_float, _method_key("adapter", "adapter_ratio")),
    "TRAINER.ADAPTER.TARGET": (_str, _adapter_target),
    "TRAINER.TIP.LOAD_CACHE": (_bool, _method_key("tip", "tip_load_cache")),
    "TRAINER.TIP.beta": (_float, _method_key("tip", "tip_beta")),
    "TRAINER.TIP.alpha": (_float, _method_key("tip", "tip_alpha")),
    "TRAINER.TIP.AUGMENT_EPOCH": (_int, _method_key("tip", "tip_augment_epoch")),
    "TRAINER.TIP.search_best": (_bool, _method_key("tip", "tip_search_best")),
    "TRAINER.TIP.NEW": (_bool, _method_key("tip", "tip_fixed_cache")),
    "TRAINER.TIP.NEW_DATASET": (_bool, _method_key("tip", "tip_new_dataset")),
    "DATASET.NAME": (_str, _dataset_name),
    "DATASET.ROOT": _to("dataset_dir", _str),
    "DATASET.NUM_SHOTS": (_int, _num_shots),
    "DATASET.SUBSAMPLE_CLASSES": (_str, _subsample),
    "SEED": _to("seed", _int),
    "OUTPUT_DIR": _to("output_dir", _str),
}
DASSL_OPTIM_DEFAULTS = {"weight_decay": 5e-4, "momentum": 0.9}  # Dassl's OPTIM defaults when NAME is given


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return out
    return {prefix: node}


def translate(config: dict[str, Any], path: str = "<dict>") -> Translation:
    translation = Translation(path)
    for key, value in _flatten(config).items():
        if key not in SCHEMA:
            close = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise DasslConfigError(f"{path}: unknown key {key}{hint}.")
        kind, rule = SCHEMA[key]
        try:
            value = kind(value)
        except TypeError as err:
            raise DasslConfigError(f"{path}: {key} must be {err}, got {value!r}.") from None
        rule(translation, value, key)
    return translation


def with_optim_defaults(translation: Translation) -> Translation:
    """Dassl's OPTIM defaults, once all files are merged, for the keys no file set."""
    if "clip_optim" in translation.values:
        for key, default in DASSL_OPTIM_DEFAULTS.items():
            if key not in translation.values:
                translation.set(key, default, "Dassl default for OPTIM.NAME")
    return translation


PACKAGED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "clip_finetune")


def resolve_config(name: str) -> str:
    """A bare name (``vit_b16``) is a config shipped with the package; anything else is a path."""
    if os.sep not in name and "/" not in name and not name.endswith((".yaml", ".yml")):
        packaged = os.path.join(PACKAGED, f"{name}.yaml")
        if not os.path.isfile(packaged):
            shipped = sorted(f[:-5] for f in os.listdir(PACKAGED) if f.endswith(".yaml"))
            raise DasslConfigError(f"clip_config: no packaged config `{name}` (shipped: {', '.join(shipped)}).")
        return packaged
    return name


def translate_files(paths: str | list[str]) -> Translation:
    """Several files (a list or comma-separated) merge left to right, later ones winning, like Dassl's merges."""
    names = [p.strip() for p in paths.split(",")] if isinstance(paths, str) else list(paths)
    merged = Translation(", ".join(names))
    for name in names:
        part = translate_file(resolve_config(name))
        for key, value in part.values.items():
            merged.set(key, value, f"{part.source[key]} in {part.path}")
    return with_optim_defaults(merged)


def translate_file(path: str) -> Translation:
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise DasslConfigError(f"clip_config: `{path}` does not exist.") from None
    except yaml.YAMLError as err:
        raise DasslConfigError(f"clip_config: `{path}` is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise DasslConfigError(f"clip_config: `{path}` must hold a mapping of upper-case sections.")
    return translate(config, path)
