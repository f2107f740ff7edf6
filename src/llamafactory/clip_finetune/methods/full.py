"""Full finetuning: every weight of the chosen towers trains."""

from typing import Any

from torch import nn

from .base import Method, set_trainable


class FullMethod(Method):
    name = "full"

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        set_trainable(clip, False)
        if not finetuning_args.freeze_vision_tower:
            set_trainable(clip.vision_model, True)
            set_trainable(clip.visual_projection, True)
        if not finetuning_args.freeze_text_tower:
            set_trainable(clip.text_model, True)
            set_trainable(clip.text_projection, True)
        clip.logit_scale.requires_grad_(finetuning_args.train_logit_scale)
        if training_args.do_train and not any(p.requires_grad for p in clip.parameters()):
            raise ValueError("Nothing to train: freeze_vision_tower and freeze_text_tower are both true.")
        return clip
