"""Parse the clip stage's arguments together with LLaMA-Factory's ``TrainingArguments``.

Accepts what LLaMA-Factory's ``read_args`` produces: a dict (yaml with ``key=value`` overrides, or
``run_exp({...})``) or an argv list. Unknown keys are errors that name the closest valid key.
"""

import dataclasses
import difflib
import json
import math
import os
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from llamafactory.extras import logging
from llamafactory.hparams import TrainingArguments
from transformers import HfArgumentParser

from .data_args import ClipDataArguments
from .finetuning_args import ClipFinetuningArguments
from .model_args import ClipModelArguments, is_adapter_dir
from .training_defaults import STAGE_DEFAULTS


logger = logging.get_logger(__name__)

CLIP_ARGS = (ClipModelArguments, ClipDataArguments, TrainingArguments, ClipFinetuningArguments)
ClipArgs = tuple[ClipModelArguments, ClipDataArguments, TrainingArguments, ClipFinetuningArguments]


def with_stage_defaults(args: dict[str, Any] | list[str]) -> dict[str, Any] | list[str]:
    if isinstance(args, dict):
        return {**STAGE_DEFAULTS, **args}
    given = {item.split("=")[0].lstrip("-") for item in args if item.startswith("--")}
    extra = []
    for key, value in STAGE_DEFAULTS.items():
        if key not in given:
            extra += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return extra + list(args)


def valid_keys() -> list[str]:
    return sorted({f.name for cls in CLIP_ARGS for f in dataclasses.fields(cls) if f.init} | {"clip_config"})


def clip_help() -> str:
    """The stage's own keys with their help (``llamafactory-cli train ... -h`` with ``stage: clip``)."""
    parser = HfArgumentParser(
        (ClipModelArguments, ClipDataArguments, ClipFinetuningArguments),
        prog="llamafactory-cli train <config.yaml> (stage: clip)",
        allow_abbrev=False,
    )
    return (
        parser.format_help()
        + "\nEvery Hugging Face Trainer key (learning_rate, num_train_epochs, per_device_train_batch_size, bf16, "
        'save_steps, report_to, deepspeed, ...) applies too: `python -c "from transformers import TrainingArguments; '
        'help(TrainingArguments)"` lists them.'
    )


def unknown_key_error(keys: list[str]) -> ValueError:
    known = valid_keys()
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hints.append(f"`{key}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return ValueError(f"Unknown argument(s) for stage clip: {', '.join(hints)}. Nothing is ignored: fix or remove it.")


def check_choices(parsed: Any) -> None:
    """``parse_dict`` does not enforce ``Literal`` choices (argparse does); do it for every key alike."""
    for name, hint in get_type_hints(type(parsed)).items():
        if get_origin(hint) is Literal and getattr(parsed, name) not in get_args(hint):
            raise ValueError(f"{name}: `{getattr(parsed, name)}` is not one of {list(get_args(hint))}.")


MAX_INT = 2**53  # past this an integer setting is a typo, and JSON (the web UI) cannot hold it exactly
SCALARS = (bool, int, float, str)


def field_types() -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for cls in CLIP_ARGS:
        hints.update(get_type_hints(cls))
    return hints


def _scalar(key: str, kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (numbers written as strings are read, integral floats are ints), else an error."""
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, bool):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value) if kind is float else int(value.strip())
            except ValueError:
                number = None
        if isinstance(number, float) and kind is int and number.is_integer() and abs(number) <= MAX_INT:
            number = int(number)
        if (
            isinstance(number, (int, float))
            and not isinstance(number, bool)
            and (kind is float or isinstance(number, int))
        ):
            if math.isfinite(number) and abs(number) <= (MAX_INT if kind is int else 1e300):
                return kind(number)
            raise ValueError(f"{key}: {value!r} is out of range.")
    raise ValueError(f"{key} must be {'a ' + kind.__name__ if kind is not int else 'an integer'}, got {value!r}.")


def check_types(args: dict[str, Any]) -> dict[str, Any]:
    """``parse_dict`` takes values as they are; check (and read) them against each field's type, as argparse does
    for command-line flags, so `learning_rate: "abc"` stops here naming the key instead of inside the optimizer."""
    hints, checked = field_types(), {}
    for key, value in args.items():
        hint = hints.get(key)
        options = (
            [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, UnionType) else [hint]
        )
        optional = hint is not None and len(options) < len(get_args(hint) or [hint])
        if value is None:
            if hint is not None and not optional:
                raise ValueError(f"{key} needs a value, got null.")
            checked[key] = value
            continue
        kind = options[0] if len(options) == 1 else None
        if kind in SCALARS:
            value = _scalar(key, kind, value)
        elif get_origin(kind) is list and get_args(kind)[0] in SCALARS:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{key} must be a list like [a, b], got {value!r}.")
            value = [_scalar(key, get_args(kind)[0], item) for item in value]
        checked[key] = value
    return checked


def _parse(args: dict[str, Any] | list[str]) -> ClipArgs:
    parser = HfArgumentParser(CLIP_ARGS, allow_abbrev=False)
    if isinstance(args, dict):
        unknown = [key for key in args if key not in set(valid_keys())]
        if unknown:
            raise unknown_key_error(unknown)
        parsed = parser.parse_dict(check_types(args))
        for obj in parsed:
            if not isinstance(obj, TrainingArguments):
                check_choices(obj)
        return parsed
    *parsed, remaining = parser.parse_args_into_dataclasses(args=list(args), return_remaining_strings=True)
    if remaining:
        flags = [item.split("=")[0].lstrip("-") for item in remaining if item.startswith("--")]
        raise unknown_key_error(flags or remaining)
    return tuple(parsed)


def parse_clip_args(args: dict[str, Any] | list[str]) -> ClipArgs:
    """Read the arguments (with the stage's defaults under them) and check what holds for every method and task."""
    model_args, data_args, training_args, finetuning_args = _parse(with_stage_defaults(args))
    _check(model_args, data_args, training_args, finetuning_args)
    return model_args, data_args, training_args, finetuning_args


def _check(model_args, data_args, training_args, finetuning_args) -> None:
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        raise ValueError("Nothing to do: set do_train, do_eval and/or do_predict to true.")
    if training_args.do_predict and not data_args.predict_dataset:
        raise ValueError("do_predict needs `predict_dataset` (a name from dataset_info.json in dataset_dir).")
    if data_args.predict_dataset and not training_args.do_predict:
        raise ValueError("predict_dataset is read by do_predict: set do_predict: true, or remove it.")
    if training_args.do_train and not data_args.dataset:
        raise ValueError("do_train needs `dataset` (a name from dataset_info.json in dataset_dir).")
    if training_args.do_eval and not data_args.eval_dataset:
        raise ValueError("do_eval needs `eval_dataset` (a name from dataset_info.json in dataset_dir).")
    if finetuning_args.epoch_lr_schedule and training_args.lr_scheduler_type not in ("cosine", "constant"):
        raise ValueError(
            f"epoch_lr_schedule supports lr_scheduler_type cosine or constant, not {training_args.lr_scheduler_type}."
        )
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(training_args, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(training_args, key)}.")
    if training_args.do_train and is_adapter_dir(model_args.model_name_or_path):
        raise ValueError(
            f"model_name_or_path: `{model_args.model_name_or_path}` holds a PEFT adapter, which this stage evaluates "
            "and predicts with (do_eval, do_predict) but does not train further: train from its base checkpoint."
        )
    _check_image_size(model_args, data_args)
    if not os.path.isfile(os.path.join(data_args.dataset_dir, "dataset_info.json")):
        raise ValueError(
            f"dataset_dir: `{data_args.dataset_dir}` has no dataset_info.json (relative paths start at {os.getcwd()})."
        )


def _check_image_size(model_args, data_args) -> None:
    """A size the checkpoint was not trained at fails deep inside transformers: say so while parsing."""
    if data_args.image_size is None or model_args.interpolate_pos_encoding:
        return
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
        )
    except Exception:  # an unreachable checkpoint is reported, with its own message, when the model loads
        return
    native = getattr(getattr(config, "vision_config", None), "image_size", None)
    if native is not None and native != data_args.image_size:
        raise ValueError(
            f"image_size: {data_args.image_size} differs from the {native}px that {model_args.model_name_or_path} "
            f"was trained at. Set image_size: {native} (or remove it; Dassl's INPUT.SIZE sets it too), or set "
            "interpolate_pos_encoding: true to run at the new size with interpolated position embeddings."
        )
