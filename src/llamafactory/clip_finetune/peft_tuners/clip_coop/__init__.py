"""CoOp (Zhou et al., IJCV 2022, arXiv 2109.01134): learned context vectors in the text tower's token embeddings, as a
PEFT method."""

from .config import ClipCoopConfig
from .layer import ClipCoopEmbedding
from .model import ClipCoopModel


__all__ = ["ClipCoopConfig", "ClipCoopEmbedding", "ClipCoopModel"]
