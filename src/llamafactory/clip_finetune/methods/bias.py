"""Bias-only finetuning (BitFit, Ben Zaken et al., ACL 2022): only bias vectors of the chosen towers train."""

from typing import TYPE_CHECKING, Any

from llamafactory.extras import logging
from torch import nn

from .abs import SelectableMethod
from .base import set_trainable, tower_modules


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments

    from ..hparams import ClipFinetuningArguments


logger = logging.get_logger(__name__)


def is_selected_bias(name: str, include: Any, exclude: Any) -> bool:
    """A ``*.bias`` parameter whose name contains an include string (all if none given) and no exclude string."""
    if name.rsplit(".", 1)[-1] != "bias":
        return False
    if include and not any(term in name for term in include):
        return False
    return not (exclude and any(term in name for term in exclude))


class BiasMethod(SelectableMethod):
    name = "bias"
    own_keys = {"bias_terms": "", "bias_terms_exclude": ""}

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        """Names are matched in full, as ``clip.named_parameters()`` prints them (``vision_model.encoder...``)."""
        set_trainable(clip, False)
        include, exclude = finetuning_args.bias_terms, finetuning_args.bias_terms_exclude
        towers = {id(p) for module in tower_modules(clip, finetuning_args) for p in module.parameters()}
        selected = []
        for name, param in clip.named_parameters():
            if id(param) in towers and is_selected_bias(name, include, exclude):
                param.requires_grad_(True)
                selected.append(name)
        self.check_trainable(clip, training_args, f"no bias matches bias_terms={include}, exclude={exclude}")
        logger.info_rank0(f"bias: {len(selected)} bias vectors train: {', '.join(selected)}")
        return clip
