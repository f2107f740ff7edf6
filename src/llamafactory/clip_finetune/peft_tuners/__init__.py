"""PEFT methods of this project, registered with PEFT on import (``get_peft_model``, ``PeftModel.from_pretrained``)."""

from .clip_adapter import ClipAdapterConfig, ClipAdapterLayer, ClipAdapterModel
from .clip_coop import ClipCoopConfig, ClipCoopEmbedding, ClipCoopModel
from .clip_vpt import ClipVptConfig, ClipVptEncoder, ClipVptModel
from .registry import register_all


register_all()

__all__ = [
    "ClipAdapterConfig",
    "ClipAdapterLayer",
    "ClipAdapterModel",
    "ClipCoopConfig",
    "ClipCoopEmbedding",
    "ClipCoopModel",
    "ClipVptConfig",
    "ClipVptEncoder",
    "ClipVptModel",
]
