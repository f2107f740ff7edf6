from dataclasses import dataclass, field

from peft import PeftConfig, PeftType


TARGETS = {
    "vision": ["visual_projection"],
    "text": ["text_projection"],
    "both": ["visual_projection", "text_projection"],
}


@dataclass
class ClipAdapterConfig(PeftConfig):
    """A bottleneck MLP (c -> c/reduction -> c, ReLUs, no bias) on a tower's projected feature, blended residually:
    f = ratio * A(f) + (1 - ratio) * f. ``c`` is the checkpoint's projection dimension."""

    reduction: int = field(default=4, metadata={"help": "Bottleneck reduction factor."})
    ratio: float = field(default=0.2, metadata={"help": "Residual ratio: weight of the adapted feature."})
    target_modules: list[str] | None = field(
        default_factory=lambda: list(TARGETS["vision"]),
        metadata={"help": "Projection layers to adapt: visual_projection and/or text_projection."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.CLIP_ADAPTER  # added to the enum by ..registry before this class is used
        if self.reduction < 1 or not 0.0 <= self.ratio <= 1.0:
            raise ValueError(
                f"clip_adapter: reduction must be >= 1 and ratio in [0, 1], got {self.reduction}, {self.ratio}."
            )
