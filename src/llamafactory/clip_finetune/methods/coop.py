"""CoOp (Zhou et al., IJCV 2022) and KgCoOp (Yao et al., CVPR 2023): learned context vectors in the class prompts'
token embeddings, the rest frozen; KgCoOp adds a pull toward the hand-crafted prompts' features (the task's
``anchor_weight``). The context lives in PEFT (``peft_tuners.clip_coop``); the tokenizer leaves its slots. For
image_to_text the one context is prepended to every caption."""

from typing import TYPE_CHECKING, Any

import torch
from llamafactory.extras import logging
from peft import get_peft_model
from torch import nn

from ..model.families import TextTokenizer, family_of
from ..peft_tuners import ClipCoopConfig
from .base import PeftMethod


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments

    from ..data import ClipDatasets
    from ..hparams import ClipFinetuningArguments


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
    caches_features = True

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

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        f, family = finetuning_args, family_of(clip.config)
        init, n_ctx = None, f.coop_n_ctx or 16  # CoOp's default context length
        if f.coop_ctx_init:  # CoOp: the phrase's token embeddings, its length the context's
            phrase = f.coop_ctx_init.lower() if family.lower_case else f.coop_ctx_init
            ids = self.tokenizer.tokenizer(phrase, add_special_tokens=False)["input_ids"]
            if f.coop_n_ctx not in (None, len(ids)):
                raise ValueError(
                    f"coop_ctx_init `{f.coop_ctx_init}` is {len(ids)} tokens, but coop_n_ctx is {f.coop_n_ctx}."
                )
            n_ctx = len(ids)
            init = clip.get_submodule(family.token_embedding).weight[torch.tensor(ids)].detach().clone()
        config = ClipCoopConfig(
            n_ctx=n_ctx,
            n_groups=self.classes if f.coop_class_specific else 1,
            class_token_position=f.coop_class_token_position,
            target_modules=[family.token_embedding],
        )
        model = get_peft_model(clip, config)
        if init is not None:
            layer = model.get_submodule(f"base_model.model.{family.token_embedding}")
            with torch.no_grad():
                layer.clip_coop_ctx["default"].copy_(init.unsqueeze(0))
        logger.info_rank0(
            f"coop: {config.n_groups} x {config.n_ctx} context vectors "
            f"({'from `' + f.coop_ctx_init + '`' if init is not None else 'random'}), class name at the "
            f"{config.class_token_position}{', KgCoOp weight ' + str(f.coop_kg_weight) if f.coop_kg_weight else ''}."
        )
        return model
