"""Merge a Dassl-style ``clip_config`` under the keys a run gives explicitly (they win); log where each came from."""

from typing import Any

from llamafactory.extras import logging

from .translate import translate_files


logger = logging.get_logger(__name__)


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
