"""Wiring of Tip-Adapter into a run: the cache callback (build or reload, save, resume) and the alpha/beta search."""

import hashlib
import os
from typing import TYPE_CHECKING

import torch
from accelerate.utils import broadcast_object_list
from llamafactory.extras import logging
from transformers import TrainerCallback

from ...data.datasets import CachedViewsDataset
from ..base import Run
from ..feature_cache import (
    cache_device,
    check_disjoint,
    encode_shard,
    eval_features,
    gather_rows,
    project_views,
    shared_views,
)
from ..tensor_file import check_tensors, locked, read_tensors
from .cache import CACHE_FILE, TipCache, build_keys, load_cache, save_cache, search_alpha_beta, tip_search_grid
from .shared import SharedCache


if TYPE_CHECKING:
    from ...hparams import ClipDataArguments, ClipFinetuningArguments, ClipModelArguments


logger = logging.get_logger(__name__)


def cache_header(
    model_args: "ClipModelArguments",
    data_args: "ClipDataArguments",
    finetuning_args: "ClipFinetuningArguments",
    seed: int,
    classnames,
    dim: int,
) -> dict:
    """What a cache was built from; a reloaded cache must match it exactly."""
    return {
        "checkpoint": model_args.model_name_or_path,
        "dataset": data_args.dataset,
        "num_shots": data_args.num_shots,
        "seed": seed,
        "augment_epoch": finetuning_args.tip_augment_epoch,
        "train_transforms": list(data_args.train_transforms),
        "crop_scale": list(data_args.crop_scale) if data_args.crop_scale else None,
        "feature_dim": dim,
        "finetuned": finetuning_args.tip_finetune,
        "classnames": list(classnames or []),
    }


def project_keys(model, pooled: torch.Tensor, device) -> torch.Tensor:
    """[images, views, width] pooled outputs -> keys: the projected views, averaged and re-normalized."""
    return build_keys(project_views(model, pooled, device))


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class TipCacheCallback(TrainerCallback):
    """Owns a run's Tip-Adapter cache: builds or reloads it, saves it with each checkpoint, restores it on resume.

    ``build`` runs before ``trainer.train()``, not at ``on_train_begin``: the HF Trainer creates the optimizer (which
    must hold Tip-F's keys) and the train loader (the cached views) before that event, and the training-free path
    never trains. Under torchrun each rank encodes only its shard of the training images and the features are
    gathered, so every rank holds the same cache. A compatible cache reloaded with ``tip_load_cache`` needs no image
    encoded (Tip-F still encodes the views it trains on).
    """

    def __init__(self, run: Run):
        self.run = run
        self.datasets, self.model_args, self.data_args = run.datasets, run.model_args, run.data_args
        self.finetuning_args = run.finetuning_args
        self.header: dict = {}

    @property
    def trainer(self):
        return self.run.trainer

    def all_views(self) -> torch.Tensor:
        """Every training image's views on every rank (Tip-F samples any of them), where they fit best."""
        trainer, train, views = self.trainer, self.datasets.train, self.finetuning_args.tip_augment_epoch
        return shared_views(trainer, train, views, cache_device(trainer, len(train), views))

    def image_keys(self, views: torch.Tensor | None) -> torch.Tensor:
        """Keys of the training images: from all views when held, else from this rank's shard, gathered (keys are
        smaller than the views they average)."""
        trainer, train, device = self.trainer, self.datasets.train, self.trainer.args.device
        if views is not None:
            return project_keys(trainer.model, views, device)
        views = self.finetuning_args.tip_augment_epoch
        local = encode_shard(trainer, train, views, cache_device(trainer, len(train), views))
        return gather_rows(trainer, project_keys(trainer.model, local, device), len(train), device)

    @torch.no_grad()
    def shared_keys_values(self, views, directory: str, dim: int):
        """The shared fixed-size cache: optionally add this dataset, then keep only this dataset's slots.

        Rank 0 reads, updates and writes the file under one lock (two runs adding datasets at once each add theirs,
        in the order they take the lock) and hands the result to the other ranks, so every rank holds the same
        slots even when another run changes the file meanwhile."""
        trainer, datasets, f = self.trainer, self.datasets, self.finetuning_args
        header = {"checkpoint": self.model_args.model_name_or_path, "feature_dim": dim}
        size, name = f.tip_cache_size, self.data_args.dataset
        features = self.image_keys(views).cpu() if f.tip_new_dataset else None  # a collective: every rank
        result = [None]
        if trainer.is_world_process_zero():
            with locked(directory):
                shared = SharedCache.load(directory, size, header) or SharedCache(size, dim)
                if f.tip_new_dataset:
                    shared.add(name, datasets.classnames, features, datasets.train.labels)
                    shared.save(directory, header)
                    logger.info_rank0(
                        f"tip: added `{name}` to the shared cache ({size} slots, {len(shared.names)} labels)."
                    )
            result = [shared.restricted(name, datasets.classnames)]
        if trainer.accelerator.num_processes > 1:
            result = broadcast_object_list(result)
        keys, values = result[0]
        logger.info_rank0(f"tip: {len(keys)} of the {size} shared slots hold `{name}`'s classes.")
        return keys, values

    @torch.no_grad()
    def build(self) -> None:
        """Put a TipCache on the model: reloaded when allowed and compatible, else built from the training images."""
        trainer, datasets, f = self.trainer, self.datasets, self.finetuning_args
        model, args = trainer.model, trainer.args
        dim = model.family.feature_width(model.clip)
        self.header = cache_header(self.model_args, self.data_args, f, args.seed, datasets.classnames, dim)
        directory = f.tip_cache_dir or args.output_dir
        saved = load_cache(directory, self.header) if f.tip_load_cache and not f.tip_fixed_cache else None
        views = None
        if f.tip_finetune:
            views = self.all_views()
            trainer.train_dataset = CachedViewsDataset(views, datasets.train)
        if f.tip_fixed_cache:
            keys, values = self.shared_keys_values(views, directory, dim)
        elif saved is not None:
            keys, values = saved["keys"], saved["values"]
            logger.info_rank0(f"tip: reloaded the cache of {len(keys)} keys from {directory}.")
        else:
            keys = self.image_keys(views)
            values = model.task.head_values(model, datasets.train)
            logger.info_rank0(f"tip: cache of {len(keys)} keys from {f.tip_augment_epoch} augmented views per image.")
        model.head = TipCache(keys, values, f.tip_alpha, f.tip_beta, f.tip_finetune).to(args.device)
        datasets.train.decoded = None  # decoded training images (image_cache): the cache and its views replace them
        logger.info(f"tip: rank {args.process_index} holds {len(keys)} keys, digest {digest(model.head.keys)}.")

    def save(self) -> None:
        """The final cache (with the alpha and beta in use) in output_dir."""
        trainer = self.trainer
        if trainer.is_world_process_zero():
            cache = trainer.model.head
            path = save_cache(
                cache, trainer.args.output_dir, {**self.header, "alpha": cache.alpha, "beta": cache.beta}
            )
            logger.info_rank0(f"tip: cache saved to {path}.")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Resuming Tip-F: the checkpoint's learned keys, checked against this run's cache, replace the built ones."""
        checkpoint = args.resume_from_checkpoint
        if not checkpoint:
            return
        path = os.path.join(checkpoint, CACHE_FILE)
        saved = read_tensors(checkpoint, CACHE_FILE)
        if saved is None:
            raise ValueError(f"resume_from_checkpoint: {checkpoint} holds no {CACHE_FILE} (Tip-F's learned keys).")
        cache = model.head
        check_tensors(path, saved[0], {"keys": tuple(cache.keys.shape), "values": tuple(cache.values.shape)})
        with torch.no_grad():
            cache.keys.copy_(saved[0]["keys"].to(cache.keys))
        logger.info_rank0(f"tip: learned keys restored from {checkpoint}.")

    def write_checkpoint(self, folder: str) -> None:
        """Part of every Tip-F checkpoint, written before the Trainer's own files (``ClipTrainer``)."""
        save_cache(self.trainer.model.head, folder, self.header)


@torch.no_grad()
def search(trainer, datasets, data_args, finetuning_args) -> dict[str, float]:
    """Grid search of beta and alpha on the validation split (never the test split), for the task's main metric
    (classification accuracy, image-to-text Recall@1): the task poses the problem (``Task.head_scores``)."""
    check_disjoint(datasets.train, datasets.val, data_args, "the cache")
    model = trainer.model
    features, labels = eval_features(trainer, datasets.val)
    head = model.head
    problem = model.task.head_scores(model, features, labels, datasets.val, head.values.float())
    betas, alphas = tip_search_grid(finetuning_args.tip_search_scale, finetuning_args.tip_search_step)
    alpha, beta, metric = search_alpha_beta(problem, features @ head.keys.float().t(), betas, alphas)
    head.alpha, head.beta = alpha, beta
    name = f"tip_search_val_{model.task.main_metric}"
    logger.info_rank0(
        f"tip: search on {len(features)} validation images: alpha {alpha:.3f}, beta {beta:.3f}, {name} {metric:.4f}."
    )
    return {"tip_alpha": alpha, "tip_beta": beta, name: metric}
