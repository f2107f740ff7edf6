"""Tip-Adapter (Zhang et al., ECCV 2022, arXiv 2207.09519): a key-value cache of few-shot image features."""

from .cache import TipCache, tip_search_grid
from .method import TipMethod


__all__ = ["TipCache", "TipMethod", "tip_search_grid"]
