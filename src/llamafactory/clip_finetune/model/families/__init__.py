"""The model-family layer: the one place that knows each dual-encoder's internals (``Family``)."""

from typing import Any

from .base import Family, MetaClip2Family, PromptContext, TextTokenizer
from .chinese_clip import ChineseClipFamily
from .siglip import Siglip2Family, SiglipFamily


FAMILIES: dict[str, type[Family]] = {
    f.name: f for f in (Family, MetaClip2Family, SiglipFamily, Siglip2Family, ChineseClipFamily)
}


def family_of(config: Any) -> type[Family]:
    """The family of a checkpoint's config (its ``model_type``); an unsupported one names the supported ones."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    supported = ", ".join(f"{f.model_class_name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise ValueError(f"model type `{model_type}` is not a supported dual encoder. Supported: {supported}.")


__all__ = ["FAMILIES", "Family", "PromptContext", "TextTokenizer", "family_of"]
