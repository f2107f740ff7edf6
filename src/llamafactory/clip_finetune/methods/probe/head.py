"""A linear probe's head on the image features, and its file: ``probe_head.safetensors`` beside the checkpoint it
scores (``linear_probe``: it names the base checkpoint; ``lp_ft``: the finetuned checkpoint in the same folder)."""

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..tensor_file import check_tensors, read_tensors, write_tensors
from .solvers import LinearFit


HEAD_FILE = "probe_head.safetensors"
SAME_DIR = "."  # the header's checkpoint when the head sits beside a finetuned checkpoint (LP-FT)


class LinearHead(nn.Module):
    """Class logits of L2-normalized image features: ``x W^T + b``, plus LP++'s ``alpha * (x T^T)`` when it holds
    class text features. It replaces the zero-shot logits (``replaces_logits``) instead of adding to them."""

    replaces_logits = True

    def __init__(self, fit: LinearFit, text: torch.Tensor | None = None, trainable: bool = False):
        super().__init__()
        self.weight = nn.Parameter(fit.weight.float().clone(), requires_grad=trainable)
        self.bias = nn.Parameter(fit.bias.float().clone(), requires_grad=trainable)
        self.alpha = None if fit.alpha is None else nn.Parameter(fit.alpha.float().clone(), requires_grad=trainable)
        self.register_buffer("text", None if text is None else text.float().clone())

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        x = image_features
        logits = F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))
        if self.alpha is None:
            return logits
        return logits + self.alpha.to(x.dtype) * (x @ self.text.to(x.dtype).t())

    def tensors(self) -> dict[str, torch.Tensor]:
        found = {"weight": self.weight, "bias": self.bias, "alpha": self.alpha, "text": self.text}
        return {k: v.detach().float().cpu().contiguous() for k, v in found.items() if v is not None}


def head_shapes(header: dict[str, Any]) -> dict[str, tuple]:
    classes, dim = len(header["classnames"]), header["feature_dim"]
    shapes = {"weight": (classes, dim), "bias": (classes,)}
    if header["probe_type"] == "lpp":
        shapes.update(alpha=(classes,), text=(classes, dim))
    return shapes


def save_head(head: LinearHead, directory: str, header: dict[str, Any]) -> str:
    return write_tensors(directory, HEAD_FILE, head.tensors(), header)


def load_head(directory: str, trainable: bool = False) -> tuple[LinearHead, dict[str, Any]] | None:
    """The head saved in ``directory`` and its header (None when there is none), checked against its header."""
    saved = read_tensors(directory, HEAD_FILE)
    if saved is None:
        return None
    tensors, header = saved
    path = os.path.join(directory, HEAD_FILE)
    missing = [key for key in ("method", "checkpoint", "classnames", "feature_dim", "probe_type") if key not in header]
    if missing:
        raise ValueError(f"{path} is not a finished linear probe's head (its header lacks {missing}).")
    check_tensors(path, tensors, head_shapes(header), what="a linear probe's head")
    fit = LinearFit(tensors["weight"], tensors["bias"], tensors.get("alpha"))
    return LinearHead(fit, tensors.get("text"), trainable), header


def probe_run(path: str) -> dict[str, Any] | None:
    """An output dir holding a probe head: the checkpoint it scores, the head and its classes."""
    if not os.path.isdir(path):
        return None
    loaded = load_head(path)
    if loaded is None:
        return None
    head, header = loaded
    checkpoint = path if header["checkpoint"] == SAME_DIR else header["checkpoint"]
    return {"method": header["method"], "checkpoint": checkpoint, "head": head, "classnames": header["classnames"]}
