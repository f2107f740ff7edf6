"""Visual Prompt Tuning through PEFT: learned prompt tokens in the frozen image tower (shallow or deep)."""

from typing import Any

from ..peft_tuners import ClipVptConfig
from .base import PeftMethod


class PromptMethod(PeftMethod):
    name = "prompt"

    def peft_config(self, finetuning_args: Any) -> ClipVptConfig:
        return ClipVptConfig(
            prompt_length=finetuning_args.prompt_length,
            prompt_deep=finetuning_args.prompt_deep,
            prompt_dropout=finetuning_args.prompt_dropout,
            prompt_project=finetuning_args.prompt_project,
        )
