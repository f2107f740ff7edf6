"""CLIP-Adapter through PEFT: a residual bottleneck on the projected image (and/or text) feature."""

from typing import Any

from peft import get_peft_model
from torch import nn

from ..peft_tuners import ClipAdapterConfig
from ..peft_tuners.clip_adapter.config import TARGETS
from .base import Method


class AdapterMethod(Method):
    name = "adapter"

    def prepare(self, clip: nn.Module, finetuning_args: Any, training_args: Any) -> nn.Module:
        config = ClipAdapterConfig(
            reduction=finetuning_args.adapter_reduction,
            ratio=finetuning_args.adapter_ratio,
            target_modules=list(TARGETS[finetuning_args.adapter_target]),
        )
        return get_peft_model(clip, config)
