"""Bias-only finetuning (BitFit, Ben Zaken et al., ACL 2022): only bias vectors of the chosen towers train."""

from typing import Any

from torch import nn

from .base import Method, set_trainable, tower_modules


def is_selected_bias(name: str, include: Any, exclude: Any) -> bool:
    """A ``*.bias`` parameter whose name contains an include string (all if none given) and no exclude string."""
    if name.rsplit(".", 1)[-1] != "bias":
        return False
    if include and not any(term in name for term in include):
        return False
    return not (exclude and any(term in name for term in exclude))


class BiasMethod(Method):
    name = "bias"

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        set_trainable(clip, False)
        include, exclude = finetuning_args.bias_terms, finetuning_args.bias_terms_exclude
        for module in tower_modules(clip, finetuning_args):
            for name, param in module.named_parameters():
                param.requires_grad_(is_selected_bias(name, include, exclude))
        self.check_trainable(clip, training_args, f"no bias matches bias_terms={include}, exclude={exclude}")
        return clip
