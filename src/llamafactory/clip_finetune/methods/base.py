"""What every method shares: freezing, and the trainable-parameter report."""

from typing import Any

from llamafactory.extras import logging
from torch import nn


logger = logging.get_logger(__name__)


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(trainable)


def log_trainable(model: nn.Module) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info_rank0(
        f"trainable params: {trainable:,} || all params: {total:,} "
        f"|| trainable%: {100 * trainable / max(total, 1):.4f}"
    )
    logger.debug("trainable parameters: " + ", ".join(n for n, p in model.named_parameters() if p.requires_grad))


class Method:
    """``prepare`` receives the loaded CLIPModel and returns the module to train (the same or a PEFT wrapper)."""

    name = ""

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        raise NotImplementedError

    def callbacks(self, finetuning_args: Any, training_args: Any) -> list[Any]:
        return []
