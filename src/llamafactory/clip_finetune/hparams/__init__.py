"""Argument dataclasses. ``hparams.parser`` imports LLaMA-Factory's heavy ``hparams``: import it directly."""

from .data_args import ClipDataArguments
from .finetuning_args import ClipFinetuningArguments
from .model_args import ClipModelArguments


__all__ = ["ClipDataArguments", "ClipFinetuningArguments", "ClipModelArguments", "choices"]


def choices(cls: type, name: str) -> list:
    """The values a ``Literal`` field of an argument dataclass takes: the one list every other place derives from."""
    from typing import Literal, get_args, get_origin, get_type_hints

    hint = get_type_hints(cls)[name]
    options = [hint] if get_origin(hint) is Literal else [a for a in get_args(hint) if get_origin(a) is Literal]
    return list(get_args(options[0]))
