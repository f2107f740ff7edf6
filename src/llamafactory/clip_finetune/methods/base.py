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


def tower_modules(clip: nn.Module, finetuning_args: Any) -> list[nn.Module]:
    """The towers a method may train: the image tower unless frozen, the text tower unless frozen."""
    modules = []
    if not finetuning_args.freeze_vision_tower:
        modules += [clip.vision_model, clip.visual_projection]
    if not finetuning_args.freeze_text_tower:
        modules += [clip.text_model, clip.text_projection]
    return modules


class Method:
    """``prepare`` receives the loaded CLIPModel and returns the module to train (the same or a PEFT wrapper)."""

    name = ""

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        raise NotImplementedError

    def checkpoint_files(self, finetuning_args: Any) -> tuple[str, ...]:
        """Files of the method's own state that every checkpoint of it must hold to be resumed."""
        return ()

    @staticmethod
    def check_trainable(clip: nn.Module, training_args: Any, why: str = "both towers are frozen") -> None:
        if training_args.do_train and not any(p.requires_grad for p in clip.parameters()):
            raise ValueError(f"Nothing to train: {why}.")


class PeftMethod(Method):
    """A method whose new layers PEFT owns: ``peft_config`` says which; everything else is frozen by PEFT."""

    def peft_config(self, finetuning_args: Any) -> Any:
        raise NotImplementedError

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(clip, self.peft_config(finetuning_args))
