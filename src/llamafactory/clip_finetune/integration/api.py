"""Route ``llamafactory-cli api`` with a ``stage: clip`` config to this project's server (``clip_finetune.api``).

LLaMA-Factory's launcher pops the command and imports ``run_api`` from ``llamafactory.api.app`` when it runs it, so
replacing that module global covers the CLI; every other config reaches LLaMA-Factory's chat API untouched."""

from types import ModuleType

from .seams import check_function, require
from .tuner import route_clip_command


def patch_api(app: ModuleType) -> None:
    problems: list[str] = []
    check_function(app, "run_api", [], problems)
    from llamafactory.hparams import parser

    check_function(parser, "read_args", ["args"], problems)
    require(app, problems)

    def serve() -> None:
        from ..api.app import run_clip_api

        run_clip_api(parser.read_args())

    route_clip_command(app, "run_api", 1, serve)  # the launcher popped the command: argv is [prog, config, ...]
