import os
from dataclasses import dataclass, field
from typing import Literal


# OpenAI CLIP backbone names (as in Dassl/CoOp configs and the `clip` package) -> Hugging Face checkpoints.
BACKBONES = {
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}
UNSUPPORTED_BACKBONES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")
# short names of the other families' ViT-B/16 checkpoints -> Hugging Face checkpoints (the CLI and the web UI)
PRESETS = {
    "siglip2-base-patch16-224": "google/siglip2-base-patch16-224",
    "siglip2-base-patch16-naflex": "google/siglip2-base-patch16-naflex",
    "siglip-base-patch16-224": "google/siglip-base-patch16-224",
    "metaclip-2": "facebook/metaclip-2-worldwide-b16",
    "chinese-clip-vit-base-patch16": "OFA-Sys/chinese-clip-vit-base-patch16",
}


def resolve_backbone(name: str) -> str:
    if name in UNSUPPORTED_BACKBONES:
        raise ValueError(
            f"model_name_or_path: {name} is a ResNet CLIP, which transformers has no CLIP implementation for. "
            f"Use one of {', '.join([*BACKBONES, *PRESETS])}, a Hugging Face checkpoint or a local directory."
        )
    return BACKBONES.get(name) or PRESETS.get(name, name)


ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str) -> bool:
    """A PEFT run's output (LoRA, CLIP-Adapter, VPT): an adapter over the base checkpoint it names."""
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


@dataclass
class ClipModelArguments:
    r"""Which dual-encoder checkpoint (CLIP, SigLIP, SigLIP 2, MetaCLIP 2, Chinese-CLIP) to finetune, and how to
    load it."""

    model_name_or_path: str = field(
        default="openai/clip-vit-base-patch16",
        metadata={
            "help": "A Hugging Face checkpoint of a supported family (docs/families.md), a local directory, a short "
            "name (siglip2-base-patch16-224, siglip-base-patch16-224, metaclip-2, chinese-clip-vit-base-patch16, "
            "...), or a Dassl backbone (ViT-B/16, ViT-B/32, ViT-L/14(@336px))."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = field(
        default="sdpa", metadata={"help": "Attention kernel of the towers."}
    )
    interpolate_pos_encoding: bool = field(
        default=False,
        metadata={"help": "Interpolate the position embeddings, to run at an image_size the checkpoint was not."},
    )

    def __post_init__(self):
        self.model_name_or_path = resolve_backbone(self.model_name_or_path)
