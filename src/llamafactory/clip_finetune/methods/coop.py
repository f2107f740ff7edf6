"""CoOp (Zhou et al., IJCV 2022) and KgCoOp (Yao et al., CVPR 2023): learned context vectors in the class prompts'
token embeddings, the rest frozen; KgCoOp adds a pull toward the hand-crafted prompts' features (the task's
``anchor_weight``). The context lives in PEFT (``peft_tuners.clip_coop``); the tokenizer leaves its slots. For
image_to_text the one context is prepended to every caption."""

from typing import TYPE_CHECKING, Any

import torch
from llamafactory.extras import logging
from torch import nn

from ..model.families import TextTokenizer, family_of
from ..peft_tuners import ClipCoopConfig
from .base import PeftMethod


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments

    from ..data import ClipDatasets
    from ..hparams import ClipFinetuningArguments
    from ..model.families import Family


logger = logging.get_logger(__name__)


class CoopMethod(PeftMethod):
    name = "coop"
    own_keys = {
        "coop_n_ctx": "",
        "coop_ctx_init": "",
        "coop_class_specific": "",
        "coop_class_token_position": "",
        "coop_kg_weight": "",
    }

    @classmethod
    def check(cls, args: tuple, task: Any) -> None:
        f = args[3]
        if not task.has_classes and (f.coop_class_specific or f.coop_class_token_position != "end"):
            raise ValueError(
                f"{task.name} has no classes: its context is one, prepended to every caption (remove "
                "coop_class_specific and coop_class_token_position)."
            )
        if not task.has_classes and f.coop_kg_weight:
            raise ValueError("coop_kg_weight pulls class features toward hand-crafted prompts: classification only.")
        if f.coop_n_ctx is not None and f.coop_n_ctx < 1:
            raise ValueError(f"coop_n_ctx must be at least 1, got {f.coop_n_ctx}.")
        if f.coop_kg_weight < 0:
            raise ValueError(f"coop_kg_weight must be >= 0 (KgCoOp uses 8.0), got {f.coop_kg_weight}.")
        if f.coop_ctx_init and f.coop_class_specific:
            raise ValueError(
                "coop_ctx_init initializes one shared context (CoOp's reference ignores class-specific contexts "
                "then): remove coop_ctx_init or set coop_class_specific: false."
            )
        if f.freeze_text_tower is False:
            raise ValueError("coop trains the context only (the towers stay frozen): remove freeze_text_tower.")

    @classmethod
    def defaults(cls, finetuning_args: "ClipFinetuningArguments") -> None:
        if finetuning_args.freeze_text_tower is None:
            finetuning_args.freeze_text_tower = True  # the text tower stays frozen for both tasks: the context adapts

    def see_data(self, datasets: "ClipDatasets", tokenizer: TextTokenizer) -> None:
        self.classes, self.tokenizer = len(datasets.classnames or []), tokenizer

    def phrase_ids(self, finetuning_args: "ClipFinetuningArguments", family: "type[Family]") -> list[int] | None:
        """The token ids of ``coop_ctx_init`` (the family's case rule applied); their count is the context's."""
        f = finetuning_args
        if not f.coop_ctx_init:
            return None
        phrase = f.coop_ctx_init.lower() if family.lower_case else f.coop_ctx_init
        ids = self.tokenizer.tokenizer(phrase, add_special_tokens=False)["input_ids"]
        if f.coop_n_ctx not in (None, len(ids)):
            raise ValueError(
                f"coop_ctx_init `{f.coop_ctx_init}` is {len(ids)} tokens, but coop_n_ctx is {f.coop_n_ctx}."
            )
        return ids

    def peft_config(self, finetuning_args: "ClipFinetuningArguments", family: "type[Family]") -> ClipCoopConfig:
        ids = self.phrase_ids(finetuning_args, family)
        return ClipCoopConfig(
            n_ctx=len(ids) if ids else finetuning_args.coop_n_ctx or 16,  # CoOp's default context length
            n_groups=self.classes if finetuning_args.coop_class_specific else 1,
            class_token_position=finetuning_args.coop_class_token_position,
            target_modules=[family.token_embedding],
        )

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        """The PEFT model; a phrase initialization copies the phrase's token embeddings into the context (CoOp)."""
        f, family = finetuning_args, family_of(clip.config)
        model = super().prepare(clip, f, training_args)
        layer = model.get_submodule(f"base_model.model.{family.token_embedding}")
        ids = self.phrase_ids(f, family)
        if ids:
            with torch.no_grad():
                layer.clip_coop_ctx["default"].copy_(layer.base_layer.weight[torch.tensor(ids)].unsqueeze(0))
        groups, n_ctx = layer.clip_coop_ctx["default"].shape[:2]
        logger.info_rank0(
            f"coop: {groups} x {n_ctx} context vectors ({'from `' + f.coop_ctx_init + '`' if ids else 'random'}), "
            f"class name at the {f.coop_class_token_position}"
            f"{', KgCoOp weight ' + str(f.coop_kg_weight) if f.coop_kg_weight else ''}."
        )
        return model
