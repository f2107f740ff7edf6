"""Route ``llamafactory-cli api`` with a ``stage: clip`` config to this project's server (``clip_finetune.api``).

LLaMA-Factory's launcher pops the command and imports ``run_api`` from ``llamafactory.api.app`` when it runs it, so
replacing that module global covers the CLI; every other config reaches LLaMA-Factory's chat API untouched."""

import functools
import sys
from types import ModuleType
from typing import Any

from .seams import check_function, require
from .tuner import config_stage


def patch_api(app: ModuleType) -> None:
    problems: list[str] = []
    check_function(app, "run_api", [], problems)
    from llamafactory.hparams import parser

    check_function(parser, "read_args", ["args"], problems)
    require(app, problems)
    original = app.run_api
    if getattr(original, "__clip_stage_original__", None) is not None:
        return

    @functools.wraps(original)
    def run_api(*args: Any, **kwargs: Any) -> None:
        if config_stage(sys.argv[1:]) == "clip":  # the launcher popped the command: argv is [prog, config, ...]
            from ..api.app import run_clip_api

            return run_clip_api(parser.read_args())
        return original(*args, **kwargs)

    run_api.__clip_stage_original__ = original
    app.run_api = run_api
