"""CLIP finetuning stage (``stage: clip``) for LLaMA-Factory.

Kept import-light: the import hook resolves this package at interpreter start-up paths, and heavy modules
(torch, transformers) load only when a run starts.
"""

__version__ = "0.1.0"
