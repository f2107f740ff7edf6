"""Tip-Adapter's method: the whole CLIP is frozen; the cache (a head on the image features) is what adapts."""

from typing import Any

from torch import nn

from ..base import Method, set_trainable
from .cache import CACHE_FILE


class TipMethod(Method):
    name = "tip"

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        set_trainable(clip, False)
        return clip

    def checkpoint_files(self, finetuning_args: Any) -> tuple[str, ...]:
        return (CACHE_FILE,) if finetuning_args.tip_finetune else ()
