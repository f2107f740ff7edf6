"""Images that appear in two splits (same bytes): evaluation on them is not evaluation on unseen images.

Cheap by construction: file sizes first (one ``stat`` each), and only files whose size occurs in both splits are
read and hashed; in-memory images (Hugging Face bytes) are hashed directly.
"""

import hashlib
import os
from typing import Any


def _size(image: Any) -> int | None:
    if isinstance(image, dict) and image.get("bytes") is not None:
        return len(image["bytes"])
    path = image.get("path") if isinstance(image, dict) else image
    try:
        return os.path.getsize(path)
    except (OSError, TypeError):
        return None  # unreadable files are reported when they are decoded


def _digest(image: Any) -> str:
    if isinstance(image, dict) and image.get("bytes") is not None:
        return hashlib.sha1(image["bytes"]).hexdigest()
    path = image.get("path") if isinstance(image, dict) else image
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shared_images(first: list[Any], second: list[Any]) -> list[tuple[Any, Any]]:
    """Pairs (an image of ``first``, an image of ``second``) with the same bytes, one per image of ``second``."""
    sizes_first = [_size(image) for image in first]
    sizes_second = [_size(image) for image in second]
    common = (set(sizes_first) & set(sizes_second)) - {None}
    if not common:
        return []
    by_digest = {_digest(image): image for image, size in zip(first, sizes_first, strict=True) if size in common}
    pairs = []
    for image, size in zip(second, sizes_second, strict=True):
        if size in common and (match := by_digest.get(_digest(image))) is not None:
            pairs.append((match, image))
    return pairs


def describe(image: Any) -> str:
    if isinstance(image, dict):
        return image.get("path") or f"<{len(image.get('bytes') or b'')} bytes>"
    return str(image)
