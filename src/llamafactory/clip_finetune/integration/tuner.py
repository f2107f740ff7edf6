"""Route ``stage: clip`` from LLaMA-Factory's ``_training_function`` to this project's workflow.

``run_exp`` (CLI, torchrun workers re-running ``launcher.py``) and Ray workers (``Worker._training_function``)
all look ``_training_function`` up as a module global at call time, so replacing that global covers them.
"""

import functools
import os
import sys
from types import ModuleType
from typing import Any

from .seams import check_attributes, check_function, check_instance_attributes, require


def is_clip_stage(args: Any) -> bool:
    """``args`` as LLaMA-Factory passes it: a dict (yaml / run_exp) or an argv list."""
    if isinstance(args, dict):
        return args.get("stage") == "clip"
    if isinstance(args, (list, tuple)):
        items = [str(item) for item in args]
        for i, item in enumerate(items):
            if item == "--stage" and i + 1 < len(items) and items[i + 1] == "clip":
                return True
            if item == "--stage=clip":
                return True
    return False


def patch_tuner(tuner: ModuleType) -> None:
    problems: list[str] = []
    check_function(tuner, "_training_function", ["config"], problems)
    check_function(tuner, "run_exp", ["args", "callbacks"], problems)
    if not callable(getattr(getattr(tuner, "Worker", None), "_training_function", None)):
        problems.append("`Worker._training_function` (the Ray entry point) is missing")
    if not hasattr(tuner, "LogCallback"):
        problems.append("`LogCallback` is no longer imported by the tuner")
    from llamafactory.hparams import training_args
    from llamafactory.train import callbacks

    check_attributes(callbacks, ["LogCallback"], "llamafactory.train.callbacks", problems)  # what workflow.py imports
    check_instance_attributes(training_args.RayArguments, ["use_ray"], problems, method="__post_init__")
    require(tuner, problems)

    check_function(tuner, "read_args", ["args"], problems)
    require(tuner, problems)
    original = tuner._training_function
    if getattr(original, "__clip_stage_original__", None) is not None:
        return
    _patch_help(tuner)

    @functools.wraps(original)
    def _training_function(config: dict[str, Any]) -> None:
        if is_clip_stage(config.get("args")):
            from ..train.workflow import run_clip_training_function

            return run_clip_training_function(config)
        return original(config)

    _training_function.__clip_stage_original__ = original
    tuner._training_function = _training_function


def asks_help(args: Any) -> bool:
    keys = args if isinstance(args, (list, tuple)) else list(args) if isinstance(args, dict) else []
    return "-h" in keys or "--help" in keys


def _patch_help(tuner: ModuleType) -> None:
    """``run_exp`` answers ``-h`` with LLaMA-Factory's LLM arguments before any stage is chosen: for the clip stage,
    print its own keys instead."""
    original = tuner.run_exp

    @functools.wraps(original)
    def run_exp(args: Any = None, callbacks: Any = None) -> None:
        args = tuner.read_args(args)
        if asks_help(args) and is_clip_stage(args):
            from ..hparams.parser import clip_help

            print(clip_help())
            return None
        return original(args, callbacks)

    tuner.run_exp = run_exp


V1_MESSAGE = (
    "stage: clip runs on LLaMA-Factory's v0 launcher; USE_V1=1 sends `llamafactory-cli train` to the v1 launcher, "
    "whose trainers know nothing of it. Unset USE_V1 (or set USE_V1=0) and run the same command again."
)


def config_stage(argv: list[str]) -> str | None:
    """The stage a `llamafactory-cli <command> [config.yaml] [key=value ...]` line asks for, if it names one."""
    import yaml

    stage = None
    for item in argv:
        if item.endswith((".yaml", ".yml", ".json")) and os.path.isfile(item):
            try:
                with open(item, encoding="utf-8") as f:
                    loaded = yaml.safe_load(f)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(loaded, dict) and "stage" in loaded:
                stage = str(loaded["stage"])
        elif item.startswith(("stage=", "--stage=")):
            stage = item.split("=", 1)[1]
    for i, item in enumerate(argv[:-1]):
        if item == "--stage":
            stage = argv[i + 1]
    return stage


def route_clip_command(module: ModuleType, name: str, argv_start: int, clip_call: Any) -> None:
    """Replace ``module.name`` (once) by a function that calls ``clip_call()`` when the command line's config asks
    for ``stage: clip`` (``sys.argv[argv_start:]``: the config and its overrides) and ``module.name`` otherwise."""
    original = getattr(module, name)
    if getattr(original, "__clip_stage_original__", None) is not None:
        return

    @functools.wraps(original)
    def routed(*args: Any, **kwargs: Any) -> Any:
        if config_stage(sys.argv[argv_start:]) == "clip":
            return clip_call()
        return original(*args, **kwargs)

    routed.__clip_stage_original__ = original
    setattr(module, name, routed)


def patch_v1_launcher(launcher: ModuleType) -> None:
    """A clear error instead of a failure deep inside the v1 SFT parser."""
    problems: list[str] = []
    check_function(launcher, "launch", [], problems)
    require(launcher, problems)

    def refuse() -> None:
        raise SystemExit(V1_MESSAGE)

    route_clip_command(launcher, "launch", 2, refuse)  # `launch` runs before the command is popped from argv
