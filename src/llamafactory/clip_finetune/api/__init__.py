"""Serve a trained run: ``llamafactory-cli api`` with ``stage: clip`` (an OpenAI-style embeddings endpoint and
zero-shot classification over the run's classes or given labels)."""
