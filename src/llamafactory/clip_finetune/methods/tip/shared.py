"""A fixed-size Tip-Adapter cache shared across datasets ("experience sharing" with constant memory).

The naive scheme (class i of every dataset in slot i) makes classes of different datasets collide. Here each slot
holds a prototype key, the count of images it summarizes, and a label in a global, dataset-qualified label space
(``"dataset::class"``). Adding a dataset allocates slots to every label in proportion to its image count (at least
one each), summarizes each label's features with spherical k-means, and so keeps exactly ``size`` slots: tensors
never grow with the number of datasets (only the list of label names does). At inference the cache is restricted to
the current dataset's labels, mapped back to its class indices.
"""

import os

import torch
import torch.nn.functional as F

from ..tensor_file import check_tensors, header_mismatch, read_tensors, write_tensors


SHARED_FILE = "tip_shared_cache.safetensors"


def spherical_kmeans(
    x: torch.Tensor, weights: torch.Tensor, k: int, iters: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """k weighted unit-norm centroids of unit-norm rows ``x``; returns (centroids, summed weight per centroid)."""
    k = min(k, len(x))
    generator = torch.Generator().manual_seed(0)
    centroids = x[torch.randperm(len(x), generator=generator)[:k]].clone()
    for _ in range(iters):
        assign = (x @ centroids.t()).argmax(dim=1)
        summed = torch.zeros_like(centroids).index_add_(0, assign, x * weights[:, None])
        filled = summed.norm(dim=1) > 0
        centroids[filled] = F.normalize(summed[filled], dim=-1)
    assign = (x @ centroids.t()).argmax(dim=1)
    counts = torch.zeros(k).index_add_(0, assign, weights)
    keep = counts > 0
    return centroids[keep], counts[keep]


def allocate(counts: torch.Tensor, size: int) -> torch.Tensor:
    """Slots per label: at least one each, the rest in proportion to the counts (largest remainders)."""
    if size < len(counts):
        raise ValueError(
            f"tip_cache_size {size} is smaller than the {len(counts)} classes the shared cache must hold: raise it."
        )
    extra = size - len(counts)
    share = counts / counts.sum() * extra
    slots = share.floor().long() + 1
    remainder = share - share.floor()
    for index in torch.argsort(remainder, descending=True)[: size - int(slots.sum())]:
        slots[index] += 1
    return slots


class SharedCache:
    def __init__(self, size: int, dim: int):
        self.size, self.dim = size, dim
        self.keys = torch.zeros(size, dim)
        self.counts = torch.zeros(size)
        self.labels = torch.full((size,), -1, dtype=torch.long)  # index into self.names; -1: empty slot
        self.names: list[str] = []

    def add(self, dataset: str, classnames: list[str], features: torch.Tensor, labels: torch.Tensor) -> None:
        """Merge a dataset's (normalized) features into the fixed slots, count-weighted, re-normalized."""
        names = [f"{dataset}::{c}" for c in classnames]
        if any(n in self.names for n in names):
            raise ValueError(f"tip_new_dataset: the shared cache already holds dataset `{dataset}`.")
        points = {i: (self.keys[self.labels == i], self.counts[self.labels == i]) for i in range(len(self.names))}
        for c in range(len(names)):
            mine = features[labels == c]
            points[len(self.names) + c] = (F.normalize(mine, dim=-1), torch.ones(len(mine)))
        self.names += names
        totals = torch.stack([w.sum() for _, (_, w) in sorted(points.items())])
        slots = allocate(totals, self.size)
        keys, counts, owners = [], [], []
        for label, (x, w) in sorted(points.items()):
            centroids, weight = spherical_kmeans(x, w, int(slots[label]))
            keys.append(centroids)
            counts.append(weight)
            owners.append(torch.full((len(centroids),), label))
        used = sum(len(k) for k in keys)
        self.keys.zero_()
        self.counts.zero_()
        self.labels.fill_(-1)
        self.keys[:used] = torch.cat(keys)
        self.counts[:used] = torch.cat(counts)
        self.labels[:used] = torch.cat(owners)

    def restricted(self, dataset: str, classnames: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and one-hot values (over this dataset's classes) of the slots holding this dataset's labels."""
        lookup = torch.full((len(self.names) + 1,), -1, dtype=torch.long)  # global label -> local class
        for i, c in enumerate(classnames):
            if f"{dataset}::{c}" in self.names:
                lookup[self.names.index(f"{dataset}::{c}")] = i
        local = lookup[self.labels]  # empty slots (-1) read the last entry, which stays -1
        mask = local >= 0
        if not mask.any():
            raise ValueError(
                f"tip_fixed_cache: the shared cache holds nothing of dataset `{dataset}`; set tip_new_dataset: true."
            )
        return self.keys[mask], F.one_hot(local[mask], len(classnames)).float()

    def save(self, directory: str, header: dict) -> str:
        tensors = {"keys": self.keys, "counts": self.counts, "labels": self.labels}
        return write_tensors(directory, SHARED_FILE, tensors, {**header, "names": self.names})

    @classmethod
    def load(cls, directory: str, size: int, header: dict) -> "SharedCache | None":
        saved = read_tensors(directory, SHARED_FILE)
        if saved is None:
            return None
        tensors, found = saved
        details = header_mismatch(found, header)
        if details or "keys" in tensors and len(tensors["keys"]) != size:
            path = os.path.join(directory, SHARED_FILE)
            raise ValueError(f"tip_fixed_cache: {path} does not fit this run ({details or 'another tip_cache_size'}).")
        path = os.path.join(directory, SHARED_FILE)
        check_tensors(path, tensors, {"keys": (size, header["feature_dim"]), "counts": (size,), "labels": (size,)})
        names = found.get("names")
        labels = tensors["labels"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path} is damaged: its header has no list of label names. Delete it to rebuild.")
        if (
            labels.is_floating_point()
            or labels.min() < -1
            or labels.max() >= len(names)
            or (tensors["counts"] < 0).any()
        ):
            raise ValueError(f"{path} is damaged: slot labels or counts out of range. Delete it to rebuild.")
        cache = cls(size, header["feature_dim"])
        cache.keys, cache.counts, cache.labels = tensors["keys"], tensors["counts"], labels.long()
        cache.names = names
        return cache
