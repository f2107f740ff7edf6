"""Dassl/CoOp-style upper-case configs (``clip_config: vit_b16.yaml``) translated into clip stage arguments."""

from .merge import with_clip_config
from .translate import DasslConfigError, Translation, translate_file, translate_files


__all__ = ["DasslConfigError", "Translation", "translate_file", "translate_files", "with_clip_config"]
