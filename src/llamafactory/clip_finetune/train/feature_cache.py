"""Frozen image tower: compute its pooled output once per augmented view, instead of once per epoch."""

import time

import torch
from llamafactory.extras import logging
from torch.utils.data import DataLoader

from ..data.datasets import CachedViewsDataset


logger = logging.get_logger(__name__)


def image_tower_frozen(clip: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in clip.vision_model.parameters())


@torch.no_grad()
def cache_image_views(trainer, dataset, views: int) -> CachedViewsDataset:
    """``views`` passes over ``dataset`` with its random training transforms, in eval mode; [images, views, dim]."""
    start = time.perf_counter()
    model = trainer.model
    was_training = model.training
    model.eval()
    args = trainer.args
    loader = DataLoader(
        dataset,
        batch_size=args.per_device_eval_batch_size,
        num_workers=args.dataloader_num_workers,
        persistent_workers=args.dataloader_num_workers > 0,  # one worker start for all the views
        collate_fn=trainer.data_collator,
        pin_memory=args.dataloader_pin_memory and args.device.type == "cuda",
    )
    passes = []
    for _ in range(views):
        features = []
        for batch in loader:
            with trainer.autocast_smart_context_manager():
                pixels = batch["pixel_values"].to(args.device, non_blocking=True)
                features.append(model.pooled_image(pixels).float().cpu())
        passes.append(torch.cat(features))
    model.train(was_training)
    cached = torch.stack(passes, dim=1)
    logger.info_rank0(
        f"feature cache: {cached.shape[0]} images x {views} augmented views of the frozen image tower, "
        f"computed once in {time.perf_counter() - start:.1f}s; every epoch reuses them."
    )
    return CachedViewsDataset(cached, dataset)
