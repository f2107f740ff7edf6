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

import transformers
from llamafactory.extras import logging
from llamafactory.hparams import TrainingArguments
from transformers import HfArgumentParser

from .data_args import ClipDataArguments
from .finetuning_args import ClipFinetuningArguments
from .model_args import ClipModelArguments
from .output_dir import (
    LENGTH_KEYS,
    checkpoint_problem,
    is_bookkeeping,
    last_complete_checkpoint,
    lock_output_dir,
    read_record,
    record_differences,
    run_record,
)
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


def _argv_tokens(key: str, value: Any) -> list[str]:
    if isinstance(value, list):
        return [f"--{key}", *[str(v) for v in value]]
    return [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]


def _clip_config_method(given: dict[str, Any]) -> str | None:
    value = given.get("finetuning_type")
    return None if value is None else str(value)


def with_clip_config(args: dict[str, Any] | list[str]) -> dict[str, Any] | list[str]:
    """Merge a Dassl-style ``clip_config`` under the keys given explicitly (they win); log where each came from,
    and every key of the files that does not affect this run, with the reason."""
    from ..dassl import translate_files

    if isinstance(args, dict):
        if "clip_config" not in args:
            return args
        given = {k: v for k, v in args.items() if k != "clip_config"}
        translation = translate_files(args["clip_config"], _clip_config_method(given))
        merged = {**translation.values, **given}
    else:
        args = list(args)
        flags = [i for i, item in enumerate(args) if item == "--clip_config" or item.startswith("--clip_config=")]
        if not flags:
            return args
        i = flags[0]
        if "=" not in args[i] and (i + 1 == len(args) or args[i + 1].startswith("--")):
            raise ValueError("--clip_config needs a file (or a packaged name such as vit_b16) after it.")
        path = args[i].split("=", 1)[1] if "=" in args[i] else args[i + 1]
        rest = args[:i] + args[i + (1 if "=" in args[i] else 2) :]
        given = {item.split("=")[0].lstrip("-"): None for item in rest if item.startswith("--")}
        if "finetuning_type" in given:
            at = rest.index("--finetuning_type") if "--finetuning_type" in rest else -1
            given["finetuning_type"] = rest[at + 1] if 0 <= at < len(rest) - 1 else None
        translation = translate_files(path, _clip_config_method(given))
        merged = [tok for k, v in translation.values.items() if k not in given for tok in _argv_tokens(k, v)] + rest
    translation.check_blocked(given)
    for key, value in translation.values.items():
        origin = translation.source[key]
        if key in given:
            final = "" if given[key] is None else f" = {given[key]!r}"
            logger.info_rank0(f"clip_config: {key}{final} (yaml/command line; overrides {origin} = {value!r})")
        else:
            logger.info_rank0(f"clip_config: {key} = {value!r} (from {origin})")
    for key, why in translation.unused.items():
        logger.info_rank0(f"clip_config: {key} not used by this run: {why}.")
    return merged


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


def _field_types() -> dict[str, Any]:
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
    hints, checked = _field_types(), {}
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


def _check(model_args, data_args, training_args, finetuning_args) -> None:
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("Nothing to do: set do_train: true and/or do_eval: true.")
    if training_args.do_predict:
        raise ValueError("do_predict is not supported by stage clip; use do_eval with eval_dataset.")
    if training_args.do_train and not data_args.dataset:
        raise ValueError("do_train needs `dataset` (a name from dataset_info.json in dataset_dir).")
    if training_args.do_eval and not data_args.eval_dataset:
        raise ValueError("do_eval needs `eval_dataset` (a name from dataset_info.json in dataset_dir).")
    if data_args.num_shots is not None and finetuning_args.clip_task != "classification":
        raise ValueError("num_shots applies to classification (K images per class); remove it for image_to_text.")
    if finetuning_args.tip_search_best and not data_args.val_dataset:
        raise ValueError("tip_search_best searches on the validation split: set val_dataset (never the test set).")
    if data_args.subsample_classes != "all" and finetuning_args.clip_task != "classification":
        raise ValueError("subsample_classes applies to classification.")
    if finetuning_args.epoch_lr_schedule and training_args.lr_scheduler_type not in ("cosine", "constant"):
        raise ValueError(
            f"epoch_lr_schedule supports lr_scheduler_type cosine or constant, not {training_args.lr_scheduler_type}."
        )
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        if getattr(training_args, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(training_args, key)}.")
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


def _check_output_dir(model_args, data_args, training_args, finetuning_args) -> None:
    """Resume only the same run from its last whole checkpoint; never write into another run's folder."""
    output_dir = training_args.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir: `{output_dir}` is a file, not a folder; choose a folder for the run.")
    if not os.path.isdir(output_dir) or training_args.overwrite_output_dir:
        return
    others = sorted(name for name in os.listdir(output_dir) if not is_bookkeeping(name))
    fixes = "Choose a new output_dir, or set overwrite_output_dir: true to replace that run."
    if not training_args.do_train:
        if others:
            raise ValueError(
                f"output_dir: `{output_dir}` already holds a run ({', '.join(others[:5])}); an evaluation would "
                f"replace its results. {fixes}"
            )
        return
    from ..methods import checkpoint_files

    required = checkpoint_files(finetuning_args)
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None:
        problem = checkpoint_problem(checkpoint, required) if os.path.isdir(checkpoint) else "it is not a folder"
        if problem:
            raise ValueError(f"resume_from_checkpoint: cannot resume from `{checkpoint}`: {problem}.")
        if os.path.realpath(os.path.dirname(checkpoint)) != os.path.realpath(output_dir):
            return  # a checkpoint from elsewhere, named explicitly: its folder's record is not ours to check
    else:
        checkpoint = last_complete_checkpoint(output_dir, required)
        if checkpoint is None:
            if others:
                raise ValueError(
                    f"output_dir: `{output_dir}` already holds files of another run ({', '.join(others[:5])}) and "
                    f"no complete checkpoint to resume. {fixes}"
                )
            return
    saved, current = read_record(checkpoint), run_record(model_args, data_args, training_args, finetuning_args)
    length = record_differences(saved, current, LENGTH_KEYS)
    others = sorted((set(saved) | set(current)) - set(LENGTH_KEYS))
    differences = record_differences(saved, current, others)
    if differences:
        raise ValueError(
            f"output_dir: `{output_dir}` holds a run started with other arguments; resuming it would mix the two "
            f"({'; '.join(differences)}). {fixes}"
        )
    training_args.resume_from_checkpoint = checkpoint
    logger.info_rank0(f"Resuming training from {checkpoint} (set overwrite_output_dir: true to start over).")
    if length:
        logger.warning_rank0(
            f"The resumed run's length changed ({'; '.join(length)}): its schedule follows the new one."
        )


def check_clip_args(args: dict[str, Any] | list[str]) -> ClipArgs:
    """Parse and check the arguments the way a run would, without a run's side effects (log levels, seeding): the
    web UI calls this before it launches anything."""
    model_args, data_args, training_args, finetuning_args = _parse(with_stage_defaults(with_clip_config(args)))
    _check(model_args, data_args, training_args, finetuning_args)
    if finetuning_args.finetuning_type == "tip" and data_args.crop_scale is None:
        data_args.crop_scale = [0.5, 1.0]  # Tip-Adapter's cache views: random resized crops of 50-100% of the area
    _check_output_dir(model_args, data_args, training_args, finetuning_args)
    return model_args, data_args, training_args, finetuning_args


def get_clip_train_args(args: dict[str, Any] | list[str]) -> ClipArgs:
    model_args, data_args, training_args, finetuning_args = check_clip_args(args)
    if training_args.should_save:  # one process per run writes into output_dir
        lock_output_dir(training_args.output_dir)
    if training_args.ddp_find_unused_parameters is None:  # only ABS stops gradients of some parameters mid-run
        training_args.ddp_find_unused_parameters = finetuning_args.abs

    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
        transformers.utils.logging.enable_default_handler()
        transformers.utils.logging.enable_explicit_format()
    transformers.set_seed(training_args.seed)
    logger.info(
        f"Process rank: {training_args.process_index}, world size: {training_args.world_size}, "
        f"device: {training_args.device}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"task: {finetuning_args.clip_task}, method: {finetuning_args.finetuning_type}"
    )
    return model_args, data_args, training_args, finetuning_args
