from dataclasses import dataclass, field

from peft import PeftConfig, PeftType


@dataclass
class ClipAdapterConfig(PeftConfig):
    """A bottleneck MLP (c -> c/reduction -> c, ReLUs, no bias) on a tower's projected feature, blended residually:
    f = ratio * A(f) + (1 - ratio) * f. ``c`` is the feature's real width (the projection dimension; SigLIP's
    pooled width)."""

    reduction: int = field(default=4, metadata={"help": "Bottleneck reduction factor."})
    ratio: float = field(default=0.2, metadata={"help": "Residual ratio: weight of the adapted feature."})
    target_modules: list[str] | None = field(
        default_factory=lambda: ["visual_projection"],
        metadata={
            "help": "The layers whose output feature is adapted: CLIP's visual_projection and/or text_projection; "
            "SigLIP's vision_model.head and/or text_model.head."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.CLIP_ADAPTER  # added to the enum by ..registry before this class is used
        if self.reduction < 1 or not 0.0 <= self.ratio <= 1.0:
            raise ValueError(
                f"clip_adapter: reduction must be >= 1 and ratio in [0, 1], got {self.reduction}, {self.ratio}."
            )
