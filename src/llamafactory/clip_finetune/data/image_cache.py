"""Decode the training images once (``image_cache``): each image is decoded and resized a single time into a uint8
store in host memory, so every later epoch, and every augmented view a feature or Tip-Adapter cache encodes, only
crops and flips.

The stored size, as FFCV- and DALI-style pipelines keep it: the shorter side resized to ``ceil(size * 8 / 7)``
(256 for a 224 input: the 256/224 ratio of ImageNet evaluation), aspect ratio kept, with the run's interpolation and
antialiasing; an image already smaller is kept as decoded (never upscaled twice). Random-resized crops then draw the
same area and aspect fractions from a slightly smaller picture; evaluation images are not cached.
"""

import math
import time
from typing import Any

import psutil
import torch
from llamafactory.extras import logging
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .transforms import INTERPOLATION, ImageSpec


logger = logging.get_logger(__name__)

# ``auto`` caches when the store's estimate is at most this: a property of the data, not of the machine's free
# memory, so that one config gives one pipeline (and one result) on every host, on every rank and after a resume
AUTO_LIMIT_GIB = 8.0
ASPECT = 4 / 3  # the bytes estimate assumes this aspect ratio


def stored_side(size: int) -> int:
    return math.ceil(size * 8 / 7)


class _Decode(Dataset):
    """The training set's images, decoded and resized for the store (in loader workers when there are some)."""

    def __init__(self, dataset: Any, resize: v2.Transform, side: int):
        self.dataset, self.resize, self.side = dataset, resize, side

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        samples, pipeline = self.dataset.samples, self.dataset.transform
        image = pipeline.decode(samples.images[index], samples.origins[index])
        return self.resize(image) if min(image.shape[-2:]) > self.side else image


def decoded_images(dataset: Any, spec: ImageSpec, workers: int) -> list[torch.Tensor]:
    side = stored_side(spec.size)
    resize = v2.Resize(side, interpolation=INTERPOLATION[spec.interpolation], antialias=True)
    loader = DataLoader(_Decode(dataset, resize, side), batch_size=None, num_workers=workers, persistent_workers=False)
    return [image.clone() for image in loader]  # owned by this process, not by a worker's shared memory


def estimated_bytes(images: int, size: int) -> int:
    side = stored_side(size)
    return int(images * 3 * side * side * ASPECT)


def cache_training_images(dataset: Any, spec: ImageSpec, mode: str, workers: int) -> bool:
    """Decode ``dataset`` once into its store when ``mode`` is ``memory``, or ``auto`` and the store's estimate is at
    most ``AUTO_LIMIT_GIB``. Returns whether it did; the decision is logged either way."""
    if mode == "none" or dataset is None:
        return False
    need = estimated_bytes(len(dataset), spec.size)
    if mode == "auto" and need > AUTO_LIMIT_GIB * 2**30:
        logger.info_rank0(
            f"image_cache auto: {len(dataset)} training images would take about {need / 2**30:.1f} GiB, more than "
            f"{AUTO_LIMIT_GIB:g} GiB: decoded per epoch (image_cache: memory keeps them anyway)."
        )
        return False
    available = psutil.virtual_memory().available
    if need > available:
        logger.warning_rank0(
            f"image_cache {mode}: about {need / 2**30:.1f} GiB of decoded images, {available / 2**30:.1f} GiB "
            "available on this machine: it may run out of memory (image_cache: none decodes per epoch)."
        )
    start = time.perf_counter()
    dataset.decoded = decoded_images(dataset, spec, workers)
    held = sum(image.numel() for image in dataset.decoded)
    logger.info_rank0(
        f"image_cache {mode}: {len(dataset)} training images decoded once in {time.perf_counter() - start:.1f}s "
        f"(shorter side {stored_side(spec.size)}), {held / 2**30:.2f} GiB in host memory; epochs and cached views "
        "only crop and flip."
    )
    return True
