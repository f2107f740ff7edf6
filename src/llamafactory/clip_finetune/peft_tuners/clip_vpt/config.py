from dataclasses import dataclass, field

from peft import PeftConfig, PeftType


@dataclass
class ClipVptConfig(PeftConfig):
    """Learned prompt tokens inserted after CLS ([CLS, prompts, patches]; [prompts, patches] for an encoder without a
    class token), without position embeddings.

    Shallow: one set at the input of the first layer. Deep: a new set at the input of every layer, replacing the
    previous layer's prompt outputs."""

    prompt_length: int = field(default=5, metadata={"help": "Prompt tokens per layer."})
    prefix_tokens: int = field(
        default=1, metadata={"help": "Tokens before the patches that prompts follow: 1 (CLS) for CLIP, 0 for SigLIP."}
    )
    prompt_deep: bool = field(default=False, metadata={"help": "A new set of prompts before every layer."})
    prompt_dropout: float = field(default=0.0, metadata={"help": "Dropout on the prompts."})
    prompt_project: int | None = field(
        default=None, metadata={"help": "Learn prompts of this width, projected to the hidden width by a Linear."}
    )
    target_modules: list[str] | None = field(
        default_factory=lambda: ["vision_model.encoder"], metadata={"help": "The image tower's encoder."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.CLIP_VPT  # added to the enum by ..registry before this class is used
        if self.prompt_length < 1 or not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError("clip_vpt: prompt_length must be >= 1 and prompt_dropout in [0, 1).")
        if self.prompt_project is not None and self.prompt_project < 1:
            raise ValueError(f"clip_vpt: prompt_project must be a positive width, got {self.prompt_project}.")
