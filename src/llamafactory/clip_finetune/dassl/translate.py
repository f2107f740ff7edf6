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
from ..hparams import ClipFinetuningArguments, choices
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


def _list_of(count: int, item: Callable[[Any], Any], what: str) -> Callable[[Any], list]:
    """A kind for a list of ``count`` values, each read by ``item`` (``what``: how the error names them)."""

    def kind(value: Any) -> list:
        if not isinstance(value, list) or len(value) != count:
            raise TypeError(f"a list of {count} {what}")
        return [item(v) for v in value]

    return kind


_floats2, _ints2, _floats3 = (
    _list_of(2, _float, "numbers"),
    _list_of(2, _int, "integers"),
    _list_of(3, _float, "numbers"),
)


def _literal(value: Any, what: str) -> Any:
    """yacs writes tuples as text (`(224, 224)`): read a string as a Python literal, leave other values as they are."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise TypeError(what) from None


def _stepsizes(value: Any) -> list[int]:
    """`(-1,)` arrives as a string, a list or one integer."""
    value = _literal(value, "epochs like (30,) or [30, 60]")
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise TypeError("epochs like (30,) or [30, 60]")
    return [_int(v) for v in values]


def _crop_scale(value: Any) -> list[float]:
    """`(0.08, 1.0)` arrives as a string or a list."""
    value = _literal(value, "an area range like (0.08, 1.0)")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise TypeError("an area range like (0.08, 1.0)")
    return [_float(v) for v in value]


def _size(value: Any) -> int:
    """`(224, 224)` arrives as a string; the clip stage takes square inputs."""
    value = _literal(value, "a size like (224, 224)")
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
    """Arguments and, for each, the Dassl key it came from (``source``).

    ``unused``: keys accepted but without effect on this run, with the reason (logged, printed as comments).
    ``blocked``: argument -> why the config's value cannot be run; an error unless the argument is given
    explicitly (yaml or command line), so a config still prints in full.
    """

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)  # every Dassl key the files hold
    single_step: bool = False  # OPTIM.LR_SCHEDULER single_step, checked against STEPSIZE once merged
    stepsize: int = -1
    shared_dir: str | None = None  # TRAINER.TIP.CACHE_DIR_NEW
    trainer: str | None = None  # this file's TRAINER.NAME

    def set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.source[key] = source
        self.blocked.pop(key, None)

    def check_blocked(self, given: Any) -> None:
        for key, why in self.blocked.items():
            if key not in given:
                raise DasslConfigError(f"{why} Set `{key}` in the yaml or on the command line.")


Rule = Callable[[Translation, Any, str], None]


def _to(key: str, kind: Callable[[Any], Any]) -> tuple[Callable[[Any], Any], Rule]:
    return kind, lambda t, v, path: t.set(key, v, path)


COOP_TRAINERS = ("CoOp", "KgCoOp")


def _coop_key(key: str) -> Rule:
    """CoOp's text-context keys set the coop method when the file's TRAINER.NAME is CoOp or KgCoOp; other trainers'
    files (xtune's VPT and adapter configs) carry them as boilerplate: logged as unused."""
    method_rule = _method_key("coop", key)

    def rule(t: Translation, value: Any, path: str) -> None:
        if t.trainer in COOP_TRAINERS:
            method_rule(t, value, path)
        else:
            t.unused[path] = (
                f"CoOp's text context, used when the file's TRAINER.NAME is CoOp or KgCoOp (here: {t.trainer}); "
                "else set finetuning_type: coop and the coop_* keys"
            )

    return rule


def _one_of(value: str, options: list[str], path: str) -> None:
    if value not in options:
        raise DasslConfigError(f"{path}: `{value}` is not one of {', '.join(options)}.")


def _optim_name(t: Translation, value: str, path: str) -> None:
    _one_of(value, choices(ClipFinetuningArguments, "clip_optim"), path)
    t.set("clip_optim", value, path)


def _scheduler(t: Translation, value: str, path: str) -> None:
    """Dassl's ``single_step`` with STEPSIZE <= 0 (its default) steps at MAX_EPOCH, i.e. never: a constant rate."""
    if value not in ("cosine", "single_step"):
        raise DasslConfigError(
            f"{path}: `{value}` is not supported; the clip stage implements `cosine` and `single_step`."
        )
    t.set("lr_scheduler_type", "cosine" if value == "cosine" else "constant", path)
    t.set("epoch_lr_schedule", True, path)
    t.single_step = value == "single_step"


def _stepsize(t: Translation, value: Any, path: str) -> None:
    steps = [value] if isinstance(value, int) else list(value)
    t.unused[path] = "used by OPTIM.LR_SCHEDULER: single_step only, where it must not fall inside the run"
    t.stepsize = steps[-1]


def _warmup_epoch(t: Translation, value: int, path: str) -> None:
    t.set("warmup_epochs", max(value, 0), path)


def _backbone(t: Translation, value: str, path: str) -> None:
    try:
        t.set("model_name_or_path", resolve_backbone(value), path)
    except ValueError as err:
        t.values.pop("model_name_or_path", None)
        t.blocked["model_name_or_path"] = f"{path} in {t.path}: {err}"


def _tip_cache_dir(t: Translation, value: str, path: str) -> None:
    if value:  # xtune's default "" means ./caches/<dataset>; this stage's default is output_dir
        _method_key("tip", "tip_cache_dir")(t, value, path)
    else:
        t.unused[path] = "empty: the cache lives in output_dir (tip_cache_dir unset)"


def _tip_shared_dir(t: Translation, value: str, path: str) -> None:
    """xtune keeps the shared cache (TRAINER.TIP.NEW) in CACHE_DIR_NEW: this stage's one tip_cache_dir."""
    if value:
        t.shared_dir = value
    t.unused[path] = "used as tip_cache_dir when TRAINER.TIP.NEW is True" if value else "empty"


def _staged_lr(t: Translation, value: bool, path: str) -> None:
    if value:
        raise DasslConfigError(f"{path}: staged learning rates (NEW_LAYERS x BASE_LR_MULT) are not supported.")
    t.unused[path] = "False: one learning rate for every trained parameter, as here"


def _final_model(t: Translation, value: str, path: str) -> None:
    if value != "last_step":
        raise DasslConfigError(f"{path}: only `last_step` is supported (the final model is evaluated).")
    t.unused[path] = "last_step: the final model is evaluated, as here"


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


def _method_key(finetuning_type: str, key: str) -> Rule:
    """A key of a method section also sets the method (BIAS.* -> bias, TRAINER.VPT.* -> prompt, ...); one file with
    sections of two methods is an error."""

    def rule(t: Translation, value: Any, path: str) -> None:
        chosen = t.values.get("finetuning_type")
        if chosen not in (None, finetuning_type):
            raise DasslConfigError(
                f"{t.path}: {path} belongs to finetuning_type {finetuning_type}, but {t.source['finetuning_type']} "
                f"chose {chosen}: one file describes one method."
            )
        t.set("finetuning_type", finetuning_type, path.rpartition(".")[0])
        t.set(key, value, path)

    return rule


def _unused(reason: str) -> tuple[Callable[[Any], Any], Rule]:
    def rule(t: Translation, value: Any, path: str) -> None:
        t.unused[path] = reason

    return (lambda value: value), rule


def _adapter_target(t: Translation, value: str, path: str) -> None:
    _one_of(value, choices(ClipFinetuningArguments, "adapter_target"), path)
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
    "OPTIM.SGD_DAMPNING": _to("sgd_dampening", _float),
    "OPTIM.SGD_NESTEROV": _to("sgd_nesterov", _bool),
    "OPTIM.RMSPROP_ALPHA": _to("rmsprop_alpha", _float),
    "OPTIM.ADAM_BETA1": _to("adam_beta1", _float),
    "OPTIM.ADAM_BETA2": _to("adam_beta2", _float),
    "OPTIM.STEPSIZE": (_stepsizes, _stepsize),
    "OPTIM.GAMMA": _unused("used by step schedules only, which do not step within a run here"),
    "OPTIM.STAGED_LR": (_bool, _staged_lr),
    "OPTIM.NEW_LAYERS": _unused("used by OPTIM.STAGED_LR only"),
    "OPTIM.BASE_LR_MULT": _unused("used by OPTIM.STAGED_LR only"),
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
    "TRAINER.TIP.search_scale": (_floats2, _method_key("tip", "tip_search_scale")),
    "TRAINER.TIP.search_step": (_ints2, _method_key("tip", "tip_search_step")),
    "TRAINER.TIP.CACHE_DIR": (_str, _tip_cache_dir),
    "TRAINER.TIP.CACHE_DIR_NEW": (_str, _tip_shared_dir),
    # xtune's VPT reads its prompt keys from the CoOp section
    "TRAINER.COOP.N_CTX": (_int, _coop_key("coop_n_ctx")),
    "TRAINER.COOP.CSC": (_bool, _coop_key("coop_class_specific")),
    "TRAINER.COOP.CTX_INIT": (_str, _coop_key("coop_ctx_init")),
    "TRAINER.COOP.CLASS_TOKEN_POSITION": (_str, _coop_key("coop_class_token_position")),
    "TRAINER.COOP.W": (_float, _coop_key("coop_kg_weight")),
    "TRAINER.COOP.N_PLN": (_int, _method_key("prompt", "prompt_length")),
    "TRAINER.COOP.N_PDT": (_float, _method_key("prompt", "prompt_dropout")),
    "TRAINER.COOP.PMT_DEEP": (_bool, _method_key("prompt", "prompt_deep")),
    "DATASET.NAME": (_str, _dataset_name),
    "DATASET.ROOT": _to("dataset_dir", _str),
    "DATASET.NUM_SHOTS": (_int, _num_shots),
    "DATASET.SUBSAMPLE_CLASSES": (_str, _subsample),
    "SEED": _to("seed", _int),
    "OUTPUT_DIR": _to("output_dir", _str),
}
DEVICE = "xtune's device and DDP settings: the launcher (torchrun, DeepSpeed, accelerate) decides them here"
NOT_CLIP = "a Dassl trainer for domain adaptation / semi-supervised learning, not a CLIP method of this stage"
AUGMENT = "a setting of Dassl transforms this stage does not have (train_transforms lists the ones it has)"
SAMPLING = "the Trainer draws training batches at random from one dataset"
# Keys accepted with no effect on the run, by exact key or by section prefix; the reason is logged.
UNUSED: dict[str, str] = {
    "TRAINER.NAME": "the method is finetuning_type (or the method section of the config)",
    "TRAINER.COOP.PREC": "precision is bf16 / fp16 (fp32 when neither is set)",
    "TRAINER.COOP.ACC": "evaluation during training is eval_strategy",
    "TRAINER.COOP.XPU": DEVICE,
    "TRAINER.COOP.XPU_ID": DEVICE,
    "TRAINER.COOP.CUDA_ID": DEVICE,
    "TRAINER.COOP.disable_broadcast_buffers": DEVICE,
    "TRAINER.COOP.bucket_cap": DEVICE,
    "TRAINER.COOP.use_gradient_as_bucket_view": DEVICE,
    "TRAINER.COOP.Max_Batch": "xtune's cap on batches per epoch; use max_steps",
    "TRAINER.COCOOP.": "CoCoOp's image-conditioned text context: not a method of this stage (coop is CoOp/KgCoOp)",
    "TRAINER.LFA.": "LFA (linear feature alignment) is not a method of this stage",
    "TRAINER.OPTUNA.": "xtune's hyper-parameter search on the test split, which this stage does not repeat",
    "optuna_cfg.": "xtune's hyper-parameter search on the test split, which this stage does not repeat",
    **{
        f"TRAINER.{name}.": NOT_CLIP
        for name in (
            "MCD",
            "MME",
            "CDAC",
            "SE",
            "M3SDA",
            "DAEL",
            "CROSSGRAD",
            "DDAIG",
            "DAELDG",
            "DOMAINMIX",
            "ENTMIN",
            "MEANTEACHER",
            "MIXMATCH",
            "FIXMATCH",
        )
    },
    "INPUT.NO_TRANSFORM": AUGMENT,
    "INPUT.CROP_PADDING": AUGMENT,
    "INPUT.CUTOUT_": AUGMENT,
    "INPUT.GN_": AUGMENT,
    "INPUT.GB_": AUGMENT,
    "INPUT.RGS_P": AUGMENT,
    "INPUT.RANDAUGMENT_": AUGMENT,
    "INPUT.COLORJITTER_": AUGMENT,
    "DATALOADER.TRAIN_X.SAMPLER": SAMPLING,
    "DATALOADER.TRAIN_X.N_DOMAIN": SAMPLING,
    "DATALOADER.TRAIN_X.N_INS": SAMPLING,
    "DATALOADER.TRAIN_U.": "unlabeled data (semi-supervised trainers) is not used by CLIP methods",
    "DATALOADER.TEST.SAMPLER": "evaluation reads every image once, in order",
    "DATALOADER.K_TRANSFORMS": "one augmented view per image and step",
    "DATALOADER.RETURN_IMG0": "one augmented view per image and step",
    "DATASET.SOURCE_DOMAINS": "domain-adaptation splits; name datasets in dataset_info.json",
    "DATASET.TARGET_DOMAINS": "domain-adaptation splits; name datasets in dataset_info.json",
    "DATASET.NUM_LABELED": "semi-supervised splits; num_shots samples per class",
    "DATASET.VAL_PERCENT": "val_dataset is a split of its own here",
    "DATASET.STL10_FOLD": "an STL-10 fold; name datasets in dataset_info.json",
    "DATASET.CIFAR_C_TYPE": "a CIFAR-C corruption; name datasets in dataset_info.json",
    "DATASET.CIFAR_C_LEVEL": "a CIFAR-C corruption; name datasets in dataset_info.json",
    "DATASET.ALL_AS_UNLABELED": "semi-supervised splits are not used",
    "MODEL.INIT_WEIGHTS": "the weights are model_name_or_path's",
    "MODEL.BACKBONE.PRETRAINED": "the weights are model_name_or_path's",
    "MODEL.HEAD.": "CLIP methods add no classification head; class text features are the classifier",
    "TRAIN.COUNT_ITER": "an epoch is one pass over the training images",
    "TEST.EVALUATOR": "accuracy for classification, Recall@K for image_to_text",
    "TEST.PER_CLASS_RESULT": "overall metrics only",
    "TEST.COMPUTE_CMAT": "overall metrics only",
    "TEST.NO_TEST": "evaluation runs with do_eval",
    "TEST.SPLIT": "the evaluated split is eval_dataset",
    "USE_CUDA": "the device comes from the launcher (use_cpu for the CPU)",
    "VERBOSE": "logging follows LLaMA-Factory (LLAMAFACTORY_VERBOSITY)",
    "VERSION": "the config format version",
    "RESUME": "a run resumes from output_dir, or resume_from_checkpoint",
    "ENV": "an environment note",
}


def _unused_reason(key: str) -> str | None:
    if key in UNUSED:
        return UNUSED[key]
    prefixes = (prefix for prefix in UNUSED if prefix.endswith((".", "_")))
    return next((UNUSED[prefix] for prefix in prefixes if key.startswith(prefix)), None)


DASSL = "Dassl default"
XTUNE = "xtune default"
# Defaults of Dassl (dassl/config/defaults.py) and xtune (its extend_cfg and Dassl copy) for the keys this stage
# translates. A key absent from the files takes its default when the files use its section, so a moved config
# gives the run it described; method sections only when the run's method is that method.
SECTION_DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "OPTIM": {
        "OPTIM.NAME": ("adam", DASSL),
        "OPTIM.LR": (0.0003, DASSL),
        "OPTIM.WEIGHT_DECAY": (5e-4, DASSL),
        "OPTIM.MOMENTUM": (0.9, DASSL),
        "OPTIM.SGD_DAMPNING": (0.0, DASSL),
        "OPTIM.SGD_NESTEROV": (False, DASSL),
        "OPTIM.RMSPROP_ALPHA": (0.99, DASSL),
        "OPTIM.ADAM_BETA1": (0.9, DASSL),
        "OPTIM.ADAM_BETA2": (0.999, DASSL),
        "OPTIM.LR_SCHEDULER": ("single_step", DASSL),
        "OPTIM.MAX_EPOCH": (10, DASSL),
        "OPTIM.WARMUP_EPOCH": (-1, DASSL),
        "OPTIM.WARMUP_TYPE": ("linear", DASSL),
        "OPTIM.WARMUP_CONS_LR": (1e-5, DASSL),
        "OPTIM.WARMUP_MIN_LR": (1e-5, DASSL),
        "OPTIM.WARMUP_RECOUNT": (True, DASSL),
    },
    "INPUT": {
        "INPUT.SIZE": ((224, 224), DASSL),
        "INPUT.INTERPOLATION": ("bilinear", DASSL),
        "INPUT.PIXEL_MEAN": ([0.485, 0.456, 0.406], DASSL),
        "INPUT.PIXEL_STD": ([0.229, 0.224, 0.225], DASSL),
        "INPUT.RRCROP_SCALE": ((0.08, 1.0), DASSL),
    },
    "DATALOADER": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": (32, DASSL),
        "DATALOADER.TEST.BATCH_SIZE": (32, DASSL),
        "DATALOADER.NUM_WORKERS": (4, DASSL),
    },
    "TRAIN": {"TRAIN.PRINT_FREQ": (10, DASSL)},
    "MODEL": {
        "MODEL.ABS": (False, XTUNE),
        "MODEL.ABS_TOP": (True, XTUNE),
        "MODEL.ABS_GROUP": (False, XTUNE),
        "MODEL.ABS_GROUP_NAME": (["k_proj", "v_proj", "q_proj", "out_proj", "layrnorm", "mlp"], XTUNE),
        "MODEL.ABS_KEEP": (5, XTUNE),
    },
}
METHOD_DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "tip": {
        "TRAINER.TIP.LOAD_CACHE": (False, XTUNE),
        "TRAINER.TIP.AUGMENT_EPOCH": (10, XTUNE),
        "TRAINER.TIP.beta": (1.0, XTUNE),
        "TRAINER.TIP.alpha": (3.0, XTUNE),
        "TRAINER.TIP.NEW": (False, XTUNE),
        "TRAINER.TIP.NEW_DATASET": (False, XTUNE),
        "TRAINER.TIP.search_best": (False, XTUNE),
        "TRAINER.TIP.search_scale": ([12.0, 5.0], XTUNE),
        "TRAINER.TIP.search_step": ([200, 20], XTUNE),
    },
    "prompt": {
        "TRAINER.COOP.N_PLN": (4, XTUNE),
        "TRAINER.COOP.N_PDT": (0.0, XTUNE),
        "TRAINER.COOP.PMT_DEEP": (True, XTUNE),
    },
}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return out
    return {prefix: node}


def translate(config: dict[str, Any], path: str = "<dict>") -> Translation:
    translation = Translation(path)
    flat = _flatten(config)
    translation.trainer = flat.get("TRAINER.NAME")
    for key, value in flat.items():
        if key not in SCHEMA:
            reason = _unused_reason(key)
            if reason is not None:
                translation.unused[key] = reason
                continue
            close = difflib.get_close_matches(key, list(SCHEMA) + list(UNUSED), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise DasslConfigError(f"{path}: unknown key {key}{hint}.")
        kind, rule = SCHEMA[key]
        try:
            value = kind(value)
        except TypeError as err:
            raise DasslConfigError(f"{path}: {key} must be {err}, got {value!r}.") from None
        rule(translation, value, key)
    translation.keys = set(flat)
    return translation


def _section(key: str) -> str:
    return key.split(".")[0]


def with_defaults(translation: Translation, keys: set[str], method: str | None) -> Translation:
    """Dassl's and xtune's defaults, once all files are merged, for the keys no file set (see SECTION_DEFAULTS)."""
    sections = {_section(key) for key in keys}
    defaults = {k: v for section in sections for k, v in SECTION_DEFAULTS.get(section, {}).items()}
    defaults.update(METHOD_DEFAULTS.get(method or translation.values.get("finetuning_type"), {}))
    part = Translation(translation.path)
    for key, (value, origin) in defaults.items():
        if key not in keys:
            kind, rule = SCHEMA[key]
            part.values.pop("finetuning_type", None)  # a method default never chooses the method
            rule(part, kind(value), key)
            for arg in part.values:
                if arg not in translation.values and arg != "finetuning_type":
                    translation.set(arg, part.values[arg], f"{origin} for {key}")
    if part.single_step or translation.single_step:
        _check_single_step(translation)
    if translation.values.get("tip_fixed_cache") and translation.shared_dir:
        translation.values.setdefault("tip_cache_dir", translation.shared_dir)
        translation.source.setdefault("tip_cache_dir", "TRAINER.TIP.CACHE_DIR_NEW (TRAINER.TIP.NEW is True)")
    return translation


def _check_single_step(translation: Translation) -> None:
    """single_step decays at STEPSIZE epochs; only a step at or after MAX_EPOCH (Dassl's default -1) is a constant
    rate, which is what this stage runs for it."""
    step = translation.stepsize
    epochs = translation.values.get("num_train_epochs")
    if translation.values.get("lr_scheduler_type") == "constant" and 0 < step < (epochs or step + 1):
        raise DasslConfigError(
            f"{translation.path}: OPTIM.LR_SCHEDULER single_step with OPTIM.STEPSIZE {step} decays within the "
            f"{epochs} epochs; only `cosine`, or single_step without a step inside the run, is supported."
        )


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


def translate_files(paths: str | list[str], method: str | None = None) -> Translation:
    """Several files (a list or comma-separated) merge left to right, later ones winning, like Dassl's merges.
    ``method``: the run's finetuning_type when given outside the files (its section's defaults apply)."""
    names = [p.strip() for p in paths.split(",")] if isinstance(paths, str) else list(paths)
    merged = Translation(", ".join(names))
    keys: set[str] = set()
    for name in names:
        part = translate_file(resolve_config(name))
        keys |= part.keys
        for key, value in part.values.items():
            merged.set(key, value, f"{part.source[key]} in {part.path}")
        for key, why in part.unused.items():
            merged.unused[f"{key} in {part.path}"] = why
        for key, why in part.blocked.items():
            merged.values.pop(key, None)
            merged.blocked[key] = why
        if "OPTIM.LR_SCHEDULER" in part.keys:
            merged.single_step = part.single_step
        if "OPTIM.STEPSIZE" in part.keys:
            merged.stepsize = part.stepsize
        merged.shared_dir = part.shared_dir or merged.shared_dir
    return with_defaults(merged, keys, method)


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
