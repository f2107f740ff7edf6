"""LoRA (Hu et al., ICLR 2022) on the CLIP towers, with stock PEFT and LLaMA-Factory's keys."""

import re
from typing import TYPE_CHECKING, Any

from llamafactory.extras import logging
from peft import LoraConfig, get_peft_model
from torch import nn

from .base import PeftMethod, Run


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments

    from ..hparams import ClipFinetuningArguments


logger = logging.get_logger(__name__)


TOWER_PREFIXES = {"vision": "vision_model", "text": "text_model"}


def lora_target_pattern(targets: list[str], towers: list[str]) -> str:
    """A full-name regex, so that `q_proj` in the image tower is not also matched in a frozen text tower."""
    names = "|".join(re.escape(t) for t in targets)
    prefixes = "|".join(TOWER_PREFIXES[t] for t in towers)
    return rf"^({prefixes})\..*\.({names})$"


class LoraMethod(PeftMethod):
    name = "lora"
    own_keys = {
        "lora_rank": "",
        "lora_alpha": "",
        "lora_dropout": "",
        "lora_target": "",
        "export_merged": "{method} adds new computation (an adapter or prompts) that a plain CLIP checkpoint cannot "
        "hold; load it with PeftModel.from_pretrained instead",
    }

    @classmethod
    def check(cls, args: tuple, task: Any) -> None:
        f = args[3]
        if f.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1 (the rank of the update matrices), got {f.lora_rank}.")
        if not 0 <= f.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {f.lora_dropout}.")

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        config = self.peft_config(finetuning_args)  # its own errors pass through unchanged
        try:
            return get_peft_model(clip, config)
        except ValueError as err:
            raise ValueError(f"lora_target: {finetuning_args.lora_target} matches no module to adapt: {err}") from err

    def peft_config(self, finetuning_args: "ClipFinetuningArguments") -> LoraConfig:
        towers = [
            t
            for t, frozen in (
                ("vision", finetuning_args.freeze_vision_tower),
                ("text", finetuning_args.freeze_text_tower),
            )
            if not frozen
        ]
        if not towers:
            raise ValueError("Nothing to train: freeze_vision_tower and freeze_text_tower are both true.")
        targets = [t.strip() for t in finetuning_args.lora_target.split(",") if t.strip()]
        return LoraConfig(
            r=finetuning_args.lora_rank,
            lora_alpha=finetuning_args.lora_alpha or 2 * finetuning_args.lora_rank,
            lora_dropout=finetuning_args.lora_dropout,
            target_modules=lora_target_pattern(targets, towers),
        )

    def export(self, run: Run) -> None:
        """``export_merged``: LoRA folded into the base weights, a standalone checkpoint that
        ``CLIPModel.from_pretrained`` loads, in output_dir/merged."""
        if not run.finetuning_args.export_merged:
            return
        import copy
        import os

        path = os.path.join(run.training_args.output_dir, "merged")
        merged = copy.deepcopy(run.model.clip).merge_and_unload()
        merged.save_pretrained(path)
        run.processor.save_pretrained(path)
        logger.info_rank0(f"Merged LoRA into the base weights: {path}")
