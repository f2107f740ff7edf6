"""CLIP-Adapter through PEFT: a residual bottleneck on the projected image (and/or text) feature."""

from typing import Any

from ..peft_tuners import ClipAdapterConfig
from ..peft_tuners.clip_adapter.config import TARGETS
from .base import PeftMethod


class AdapterMethod(PeftMethod):
    name = "adapter"

    def peft_config(self, finetuning_args: Any) -> ClipAdapterConfig:
        return ClipAdapterConfig(
            reduction=finetuning_args.adapter_reduction,
            ratio=finetuning_args.adapter_ratio,
            target_modules=list(TARGETS[finetuning_args.adapter_target]),
        )
