"""Visual Prompt Tuning through PEFT: learned prompt tokens in the frozen image tower (shallow or deep)."""

from typing import Any

from peft import get_peft_model
from torch import nn

from ..peft_tuners import ClipVptConfig
from .base import Method


class PromptMethod(Method):
    name = "prompt"

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        config = ClipVptConfig(
            prompt_length=finetuning_args.prompt_length,
            prompt_deep=finetuning_args.prompt_deep,
            prompt_dropout=finetuning_args.prompt_dropout,
            prompt_project=finetuning_args.prompt_project,
        )
        return get_peft_model(clip, config)
