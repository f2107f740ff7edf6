"""Safetensors files a method writes beside (or instead of) a checkpoint: Tip-Adapter's caches, a linear probe's
head. Each carries a header saying what it was built from; writes are atomic and a directory's files are read and
written under one lock, because two runs may share them."""

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


LOCK = ".tensors.lock"
HEADER = "header"  # the safetensors metadata key holding the JSON header

_held: dict[str, Any] = {}  # directory -> [lock file, depth]: the lock is re-entrant within a process


@contextmanager
def locked(directory: str):
    """An exclusive lock on ``directory`` while two runs may read or write the same files. Re-entrant, so that a
    read-modify-write holds it from the read to the write while the reader and the writer take it too."""
    import fcntl

    key = os.path.realpath(directory)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, LOCK), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held[key] = [handle, 1]
        try:
            yield
        finally:
            del _held[key]
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_tensors(directory: str, name: str, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> str:
    """Atomic write (temporary file, then rename) under the directory's lock; ``header``: what it was built from."""
    path = os.path.join(directory, name)
    with locked(directory):
        handle, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(handle)
        save_file(tensors, tmp, metadata={HEADER: json.dumps(header, sort_keys=True)})
        os.replace(tmp, path)
    return path


def read_tensors(directory: str, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and header of ``directory/name`` (None if absent), read under the directory's lock."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return None
    with locked(directory):
        try:
            with safe_open(path, framework="pt") as f:
                found = json.loads((f.metadata() or {}).get(HEADER, "{}"))
            return load_file(path), found
        except Exception as err:  # safetensors' own error types, or a header that is not JSON
            raise ValueError(f"{path} is damaged ({err}). Delete it to rebuild.") from None


def header_mismatch(found: dict[str, Any], header: dict[str, Any]) -> str:
    """What differs between a saved header and this run's (empty when compatible)."""
    return "; ".join(
        f"{k}: cache has {found.get(k)!r}, this run {v!r}" for k, v in header.items() if found.get(k) != v
    )


def check_tensors(
    path: str, tensors: dict[str, torch.Tensor], expected: dict[str, tuple], what: str = "a cache"
) -> None:
    """Every tensor ``what`` (a cache, a head) must hold, with its shape (None: any size), float/integer kind and
    finite values; a damaged or crafted file stops the run naming the file and what is wrong."""
    problems = []
    for name, shape in expected.items():
        tensor = tensors.get(name)
        if tensor is None:
            problems.append(f"`{name}` is missing")
            continue
        if tensor.dim() != len(shape) or any(
            want is not None and got != want for got, want in zip(tensor.shape, shape, strict=True)
        ):
            want = "[" + ", ".join("N" if w is None else str(w) for w in shape) + "]"
            problems.append(f"`{name}` has shape {list(tensor.shape)}, this run needs {want}")
        elif tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problems.append(f"`{name}` holds NaN or infinite values")
    sizes = {tensors[n].shape[0] for n, shape in expected.items() if n in tensors and shape and shape[0] is None}
    if len(sizes) > 1:
        problems.append(f"its tensors disagree on the number of entries ({sorted(sizes)})")
    if problems:
        raise ValueError(f"{path} is damaged or not {what} of this run: {'; '.join(problems)}. Delete it to rebuild.")
