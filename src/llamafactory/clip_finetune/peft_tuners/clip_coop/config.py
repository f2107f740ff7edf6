from dataclasses import dataclass, field

from peft import PeftConfig, PeftType


@dataclass
class ClipCoopConfig(PeftConfig):
    """Context vectors that take the place of the token embeddings at the slots a prompt leaves for them.

    A slot is a negative token id: slot ``-(1 + group * n_ctx + k)`` holds vector ``k`` of context ``group`` (one
    context shared by every class, or one per class). Every other id is looked up as before, so the text tower's
    positions, its end-token pooling and its padding are those of the tokenized prompt."""

    n_ctx: int = field(default=16, metadata={"help": "Context vectors per prompt."})
    n_groups: int = field(
        default=1, metadata={"help": "1 (unified context) or the number of classes (class-specific)."}
    )
    class_token_position: str = field(
        default="end",
        metadata={"help": "Where prompts put the class name: after (end), inside (middle), before (front)."},
    )
    target_modules: list[str] | None = field(
        default_factory=lambda: ["text_model.embeddings.token_embedding"],
        metadata={"help": "The text tower's token embedding."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.CLIP_COOP  # added to the enum by ..registry before this class is used
        if self.class_token_position not in ("end", "middle", "front"):
            raise ValueError(
                f"clip_coop: class_token_position is end, middle or front, got {self.class_token_position}."
            )
        if self.n_ctx < 1 or self.n_groups < 1:
            raise ValueError(f"clip_coop: n_ctx and n_groups must be >= 1, got {self.n_ctx}, {self.n_groups}.")
