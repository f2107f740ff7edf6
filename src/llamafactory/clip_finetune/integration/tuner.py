"""Route ``stage: clip`` from LLaMA-Factory's ``_training_function`` to this project's workflow.

``run_exp`` (CLI, torchrun workers re-running ``launcher.py``) and Ray workers (``Worker._training_function``)
all look ``_training_function`` up as a module global at call time, so replacing that global covers them.
"""

import functools
from types import ModuleType
from typing import Any

from .seams import check_function, require


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
    require(tuner, problems)

    original = tuner._training_function
    if getattr(original, "__clip_stage_original__", None) is not None:
        return

    @functools.wraps(original)
    def _training_function(config: dict[str, Any]) -> None:
        if is_clip_stage(config.get("args")):
            from ..train.workflow import run_clip_training_function

            return run_clip_training_function(config)
        return original(config)

    _training_function.__clip_stage_original__ = original
    tuner._training_function = _training_function
