"""Dassl/CoOp-style upper-case configs (``clip_config: vit_b16.yaml``) translated into clip stage arguments."""

from .translate import DasslConfigError, Translation, translate_file, translate_files


__all__ = ["DasslConfigError", "Translation", "translate_file", "translate_files"]
