"""CLIP-Adapter (Gao et al., IJCV 2023, arXiv 2110.04544) as a PEFT method."""

from .config import ClipAdapterConfig
from .layer import ClipAdapterLayer
from .model import ClipAdapterModel


__all__ = ["ClipAdapterConfig", "ClipAdapterLayer", "ClipAdapterModel"]
