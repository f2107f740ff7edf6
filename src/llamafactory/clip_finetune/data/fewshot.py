"""K-shot sampling per class, reproducible from a seed, in tensor operations."""

import torch


def sample_per_class(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of ``shots`` random samples of every class (all of a class that has fewer), in label order."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=generator)
    order = perm[torch.argsort(labels[perm], stable=True)]  # random within each class, classes in order
    sorted_labels = labels[order]
    first = torch.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = torch.arange(len(order)) - first
    return order[rank < shots]


def validation_shots(shots: int) -> int:
    """CoOp keeps min(K, 4) validation images per class."""
    return min(shots, 4)
