"""Frozen image tower: compute its pooled output once per augmented view, instead of once per epoch."""

import hashlib
import math
import os
import time
from typing import TYPE_CHECKING

import torch
from llamafactory.extras import logging
from torch.utils.data import DataLoader

from ..data.datasets import CachedViewsDataset, ViewsDataset
from ..data.device_decode import assemble


if TYPE_CHECKING:
    from ..tasks import TrainingSet


logger = logging.get_logger(__name__)


GATHER_BYTES = 256 * 2**20  # per collective when the views are gathered across ranks
DEVICE_SHARE = 0.25  # the cache stays on the accelerator when it takes at most this share of its free memory


def cache_device(trainer, images: int, views: int) -> torch.device:
    """Where ``views`` pooled features of ``images`` images live: on the accelerator when they fit easily, so that a
    training step gathers its batch there with no host-to-device copy; otherwise in host memory."""
    args = trainer.args
    model = trainer.model
    nbytes = images * views * model.family.pooled_width(model.clip) * 4  # float32
    if args.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(args.device)
        if nbytes <= DEVICE_SHARE * free:
            return args.device
        logger.info_rank0(f"feature cache: {nbytes / 2**30:.1f} GiB kept in host memory (too large for the GPU).")
    return torch.device("cpu")


@torch.no_grad()
def compute_views(
    trainer, dataset: "TrainingSet", indices: list[int], views: int, store: torch.device
) -> torch.Tensor:
    """``views`` augmented views of each image of ``dataset[indices]`` (view v drawn as epoch v would draw it), every
    view of an image from one decode (on the device with ``image_decode_device``), encoded in eval mode;
    [images, views, width] pooled outputs of the image tower, float32 on ``store``."""
    model, args = trainer.model, trainer.args
    width = model.family.pooled_width(model.clip)
    if len(indices) == 0:
        return torch.zeros(0, views, width, device=store)
    was_training = model.training
    model.eval()
    loader = DataLoader(
        ViewsDataset(dataset, indices, views),
        batch_size=max(args.per_device_eval_batch_size // views, 1),  # images, each with its views
        num_workers=args.dataloader_num_workers,
        collate_fn=trainer.data_collator,
        pin_memory=args.dataloader_pin_memory and args.device.type == "cuda",
    )
    features = []
    for batch in loader:
        with trainer.autocast_smart_context_manager():
            pixels = assemble(batch, args.device)["pixel_values"].to(args.device, non_blocking=True)
            pooled = model.pooled_image(pixels.flatten(0, 1)).float()
            features.append(pooled.view(-1, views, width).to(store))
    model.train(was_training)
    return torch.cat(features)


def shard(total: int, rank: int, world: int) -> range:
    """This rank's contiguous share of ``total`` items: ceil(total / world) each, the last ones shorter or empty."""
    size = math.ceil(total / world)
    return range(min(total, rank * size), min(total, (rank + 1) * size))


def gather_rows(trainer, local: torch.Tensor, total: int, store: torch.device) -> torch.Tensor:
    """Every rank's ``shard`` rows, concatenated in rank order, on every rank and on ``store``: [total, ...].
    Gathered through the accelerator a slice of rows at a time, so a cache kept in host memory never has to fit
    on the device whole."""
    world = trainer.accelerator.num_processes
    if world == 1 or total == 0:
        return local.to(store)
    rows = math.ceil(total / world)
    padded = local.new_zeros(rows, *local.shape[1:])  # equal sizes for the collective
    padded[: len(local)] = local
    row_bytes = max(padded[0].numel() * padded.element_size() * world, 1)
    step = max(GATHER_BYTES // row_bytes, 1)
    pieces = []  # each slice leaves the device as soon as it is gathered
    for i in range(0, rows, step):
        gathered = trainer.accelerator.gather(padded[i : i + step].to(trainer.args.device))
        pieces.append(gathered.view(world, -1, *local.shape[1:]).to(store))
    return torch.cat(pieces, dim=1).flatten(0, 1)[:total]


def encode_shard(trainer, dataset: "TrainingSet", views: int, store: torch.device) -> torch.Tensor:
    """``compute_views`` over this rank's ``shard`` of ``dataset`` only."""
    mine = shard(len(dataset), trainer.args.process_index, trainer.accelerator.num_processes)
    start = time.perf_counter()
    local = compute_views(trainer, dataset, list(mine), views, store)
    logger.info(
        f"feature cache: rank {trainer.args.process_index} encoded its {len(mine)} of {len(dataset)} training images "
        f"x {views} augmented views in {time.perf_counter() - start:.1f}s."
    )
    return local


def shared_views(trainer, dataset: "TrainingSet", views: int, store: torch.device) -> torch.Tensor:
    """``compute_views`` over the whole dataset on every rank, each rank encoding only its shard."""
    return gather_rows(trainer, encode_shard(trainer, dataset, views, store), len(dataset), store)


def cache_image_views(trainer, dataset: "TrainingSet", views: int) -> CachedViewsDataset:
    start = time.perf_counter()
    store = cache_device(trainer, len(dataset), views)
    cached = shared_views(trainer, dataset, views, store)
    dataset.decoded = None  # the decoded images (image_cache) are not read again: the features replace them
    logger.info_rank0(
        f"feature cache: {cached.shape[0]} images x {views} augmented views of the frozen image tower, "
        f"computed once in {time.perf_counter() - start:.1f}s and kept on {store.type}; every epoch reuses them."
    )
    return CachedViewsDataset(cached, dataset)


@torch.no_grad()
def project_views(model, pooled: torch.Tensor, device: torch.device, chunk: int = 1024) -> torch.Tensor:
    """Cached pooled outputs ``[rows, ..., width]`` through the family's image projection (before normalization),
    ``chunk`` rows at a time on ``device``, in eval mode: float32 ``[rows, ..., dim]``."""
    if len(pooled) == 0:
        return torch.zeros(*pooled.shape[:-1], model.family.feature_width(model.clip), device=device)
    was_training = model.training
    model.eval()
    project = model.family.project_image
    projected = torch.cat(
        [project(model.clip, pooled[i : i + chunk].to(device)).float() for i in range(0, len(pooled), chunk)]
    )
    model.train(was_training)
    return projected


def image_identity(image) -> str:
    """A file path (resolved) or a digest of in-memory bytes: what makes two samples the same image."""
    if isinstance(image, dict) and image.get("bytes") is not None:
        return "sha1:" + hashlib.sha1(image["bytes"]).hexdigest()
    path = image.get("path") if isinstance(image, dict) else image
    return os.path.realpath(str(path))


def check_disjoint(train, val, data_args, fitted: str) -> None:
    """A search on the validation split must not see the images ``fitted`` was built from: they score too well
    (Tip-Adapter's cache would pick a too-large alpha, a probe a too-weak regularization)."""
    seen = {image_identity(image) for image in train.samples.images}
    shared = sum(image_identity(image) in seen for image in val.samples.images)
    if shared:
        raise ValueError(
            f"val_dataset `{data_args.val_dataset}` shares {shared} of its {len(val)} images with dataset "
            f"`{data_args.dataset}` ({fitted}): use a validation split disjoint from the training images."
        )


def eval_features(trainer, dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalized image features of ``dataset`` through its eval transforms (float32, every rank's share gathered),
    and its labels when it has classes: one pass of ``ClipTrainer._task_pass`` (eval mode, no gradients, autocast)."""

    def collect(model, batches, gather):
        features, labels = [], []
        for batch in batches:
            features.append(gather(model.image_features(batch["pixel_values"]).float()))
            if "labels" in batch:
                labels.append(gather(batch["labels"]))
        return torch.cat(features), torch.cat(labels) if labels else None

    return trainer._task_pass(dataset, collect)
