"""Visual Prompt Tuning through PEFT: learned prompt tokens in the frozen image tower (shallow or deep)."""

from typing import TYPE_CHECKING, Any

from ..peft_tuners import ClipVptConfig
from .base import PeftMethod


if TYPE_CHECKING:
    from ..hparams import ClipFinetuningArguments
    from ..model.families import Family


class PromptMethod(PeftMethod):
    name = "prompt"
    own_keys = {"prompt_length": "", "prompt_deep": "", "prompt_dropout": "", "prompt_project": ""}

    @classmethod
    def check(cls, args: tuple, task: Any) -> None:
        f = args[3]
        if f.prompt_length < 1:
            raise ValueError(f"prompt_length must be at least 1, got {f.prompt_length}.")
        if not 0 <= f.prompt_dropout < 1:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {f.prompt_dropout}.")
        if f.prompt_project is not None and f.prompt_project < 1:
            raise ValueError(f"prompt_project must be a positive width, got {f.prompt_project}.")

    def peft_config(self, finetuning_args: "ClipFinetuningArguments", family: "type[Family]") -> ClipVptConfig:
        """Prompts after the class token ([CLS, prompts, patches]); a family without one (SigLIP) gets [prompts,
        patches], and its attention-pooling head reads the prompts' outputs as it reads the patches'."""
        return ClipVptConfig(
            prefix_tokens=family.prefix_tokens,
            prompt_length=finetuning_args.prompt_length,
            prompt_deep=finetuning_args.prompt_deep,
            prompt_dropout=finetuning_args.prompt_dropout,
            prompt_project=finetuning_args.prompt_project,
        )
