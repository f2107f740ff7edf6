"""Patches applied by ``llamafactory_clip_hook`` to LLaMA-Factory modules right after they are imported."""
