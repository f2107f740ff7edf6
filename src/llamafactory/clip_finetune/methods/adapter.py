"""CLIP-Adapter through PEFT: a residual bottleneck on the projected image (and/or text) feature."""

from typing import TYPE_CHECKING, Any

from ..peft_tuners import ClipAdapterConfig
from .base import PeftMethod


if TYPE_CHECKING:
    from ..hparams import ClipFinetuningArguments
    from ..model.families import Family


class AdapterMethod(PeftMethod):
    name = "adapter"
    own_keys = {"adapter_reduction": "", "adapter_ratio": "", "adapter_target": ""}

    @classmethod
    def check(cls, args: tuple, task: Any) -> None:
        f = args[3]
        if f.adapter_reduction < 1:
            raise ValueError(f"adapter_reduction must be at least 1, got {f.adapter_reduction}.")
        if not 0 <= f.adapter_ratio <= 1:
            raise ValueError(
                f"adapter_ratio must be in [0, 1] (the adapted share of the feature), got {f.adapter_ratio}."
            )

    def peft_config(self, finetuning_args: "ClipFinetuningArguments", family: "type[Family]") -> ClipAdapterConfig:
        """On the projected feature; where a family has no projection (SigLIP), on the pooling head's output."""
        towers = ["vision", "text"] if finetuning_args.adapter_target == "both" else [finetuning_args.adapter_target]
        return ClipAdapterConfig(
            reduction=finetuning_args.adapter_reduction,
            ratio=finetuning_args.adapter_ratio,
            target_modules=[name for tower in towers for name in family.adapter_targets[tower]],
        )
