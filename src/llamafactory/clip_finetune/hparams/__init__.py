"""Argument dataclasses. ``hparams.parser`` imports LLaMA-Factory's heavy ``hparams``: import it directly."""

from .data_args import ClipDataArguments
from .finetuning_args import ClipFinetuningArguments
from .model_args import ClipModelArguments


__all__ = ["ClipDataArguments", "ClipFinetuningArguments", "ClipModelArguments"]
