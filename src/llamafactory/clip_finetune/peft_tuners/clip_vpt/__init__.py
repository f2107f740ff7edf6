"""Visual Prompt Tuning (Jia et al., ECCV 2022, arXiv 2203.12119) for CLIP's image tower, as a PEFT method."""

from .config import ClipVptConfig
from .layer import ClipVptEncoder
from .model import ClipVptModel


__all__ = ["ClipVptConfig", "ClipVptEncoder", "ClipVptModel"]
