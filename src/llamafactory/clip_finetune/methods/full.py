"""Full finetuning: every weight of the chosen towers trains (ABS may select among them)."""

from typing import TYPE_CHECKING

from torch import nn

from ..model.families import family_of
from .abs import SelectableMethod
from .base import set_trainable, tower_modules


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments

    from ..hparams import ClipFinetuningArguments


class FullMethod(SelectableMethod):
    name = "full"

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        set_trainable(clip, False)
        for module in tower_modules(clip, finetuning_args):
            set_trainable(module, True)
        for param in family_of(clip.config).logit_parameters(clip):  # SigLIP's bias with its scale
            param.requires_grad_(finetuning_args.train_logit_scale)
        self.check_trainable(clip, training_args)
        return clip
