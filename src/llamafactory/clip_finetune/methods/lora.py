"""LoRA (Hu et al., ICLR 2022) on the CLIP towers, with stock PEFT and LLaMA-Factory's keys; CLIP-LoRA (Zanella and
Ben Ayed, CVPR Workshops 2024) is the same layers with the paper's placement, rank, scale and dropout."""

import re
from typing import TYPE_CHECKING, Any, ClassVar

from llamafactory.extras import logging
from peft import LoraConfig, get_peft_model
from torch import nn

from ..model.families import Family, family_of
from .base import PeftMethod, Run


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments

    from ..hparams import ClipFinetuningArguments


logger = logging.get_logger(__name__)


TOWER_PREFIXES = {"vision": "vision_model", "text": "text_model"}


def lora_target_pattern(targets: list[str], towers: list[str], family: "type[Family]" = Family) -> str:
    """A full-name regex, so that `q_proj` in the image tower is not also matched in a frozen text tower. CLIP's
    names also match the family's own names for the same module (Chinese-CLIP's BERT `attention.self.query`)."""
    names = "|".join(re.escape(name) for t in targets for name in family.names(t))
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

    weight_delta = True
    # the values of the lora_* keys left unset, and whether the scale is alpha / sqrt(rank) (rank-stabilized) or
    # alpha / rank (PEFT's default)
    preset: ClassVar[dict[str, Any]] = {"lora_rank": 8, "lora_dropout": 0.0, "lora_target": "q_proj,v_proj"}
    rank_stabilized: ClassVar[bool] = False

    def delta_parameters(self, clip: nn.Module) -> dict[str, nn.Parameter]:
        """LoRA's update is B A with B starting at zero: scaling B by alpha scales the merged update by alpha."""
        return {name: p for name, p in clip.named_parameters() if p.requires_grad and ".lora_B." in name}

    @classmethod
    def check(cls, args: tuple, task: Any) -> None:
        f = args[3]
        for key, value in cls.preset.items():
            if getattr(f, key) is None:
                setattr(f, key, value)
        if f.lora_alpha is None:
            f.lora_alpha = cls.default_alpha(f.lora_rank)
        if f.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1 (the rank of the update matrices), got {f.lora_rank}.")
        if not 0 <= f.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {f.lora_dropout}.")

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        config = self.peft_config(finetuning_args, family_of(clip.config))  # its own errors pass through unchanged
        try:
            return get_peft_model(clip, config)
        except ValueError as err:
            raise ValueError(f"lora_target: {finetuning_args.lora_target} matches no module to adapt: {err}") from err

    def peft_config(self, finetuning_args: "ClipFinetuningArguments", family: "type[Family]") -> LoraConfig:
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
            lora_alpha=finetuning_args.lora_alpha,
            use_rslora=self.rank_stabilized,
            lora_dropout=finetuning_args.lora_dropout,
            target_modules=lora_target_pattern(targets, towers, family),
        )

    @staticmethod
    def default_alpha(rank: int) -> int:
        return 2 * rank  # LLaMA-Factory's default

    def export(self, run: Run) -> None:
        """``export_merged``: LoRA folded into the base weights, a standalone checkpoint that
        the family's ``from_pretrained`` (``CLIPModel``, ``SiglipModel``, ...) loads, in output_dir/merged."""
        if not run.finetuning_args.export_merged:
            return
        import copy
        import os

        path = os.path.join(run.training_args.output_dir, "merged")
        merged = copy.deepcopy(run.model.clip).merge_and_unload()
        merged.save_pretrained(path)
        run.processor.save_pretrained(path)
        logger.info_rank0(f"Merged LoRA into the base weights: {path}")


class ClipLoraMethod(LoraMethod):
    """CLIP-LoRA: LoRA on the query, key and value projections of every layer of both towers, rank 2, alpha 1 with
    the scale alpha / sqrt(rank), dropout 0.25 on the LoRA input (MaxZanella/CLIP-LoRA's defaults). The text tower
    trains for classification too, so class features are recomputed every step, as the reference does. Its training
    recipe (AdamW 2e-4, weight decay 1e-2, cosine, batch 32, 500 x shots steps, one template) is in
    examples/clip/clip_lora.yaml."""

    name = "clip_lora"
    preset = {"lora_rank": 2, "lora_dropout": 0.25, "lora_target": "q_proj,k_proj,v_proj"}
    rank_stabilized = True

    @classmethod
    def defaults(cls, finetuning_args: "ClipFinetuningArguments") -> None:
        if finetuning_args.freeze_text_tower is None:
            finetuning_args.freeze_text_tower = False  # both towers, whatever the task

    @staticmethod
    def default_alpha(rank: int) -> int:
        return 1
