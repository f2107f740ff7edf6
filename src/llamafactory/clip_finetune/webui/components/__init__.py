from .clip_tab import create_clip_tab


__all__ = ["create_clip_tab"]
