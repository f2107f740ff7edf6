"""Wiring of Tip-Adapter into a run: build or reload the cache, search alpha/beta on validation, save the cache."""

import hashlib
import os
from typing import Any

import torch
import torch.nn.functional as F
from llamafactory.extras import logging
from safetensors.torch import load_file
from transformers import TrainerCallback

from .cache import (
    CACHE_FILE,
    TipCache,
    build_keys,
    load_cache,
    save_cache,
    search_alpha_beta,
    search_alpha_beta_i2t,
    tip_search_grid,
)
from .shared import SharedCache


logger = logging.get_logger(__name__)


def cache_header(model_args: Any, data_args: Any, finetuning_args: Any, seed: int, classnames, dim: int) -> dict:
    """What a cache was built from; a reloaded cache must match it exactly."""
    return {
        "checkpoint": model_args.model_name_or_path,
        "dataset": data_args.dataset,
        "num_shots": data_args.num_shots,
        "seed": seed,
        "augment_epoch": finetuning_args.tip_augment_epoch,
        "feature_dim": dim,
        "finetuned": finetuning_args.tip_finetune,
        "classnames": list(classnames or []),
    }


@torch.no_grad()
def cache_values(model, train, classnames, device) -> torch.Tensor:
    """Classification: one-hot labels. image_to_text: each image's mean caption feature (frozen text tower)."""
    if classnames is not None:
        return F.one_hot(train.labels, len(classnames)).float()
    texts = model.encode_texts(train.input_ids, train.attention_mask).float()
    owner = train.caption_image.to(device)
    summed = torch.zeros(len(train), texts.shape[1], device=device).index_add_(0, owner, texts)
    return F.normalize(summed, dim=-1)


@torch.no_grad()
def image_keys(trainer) -> torch.Tensor:
    """Per-image keys from the feature cache: the projected views, averaged and re-normalized."""
    model, args = trainer.model, trainer.args
    pooled = trainer.train_dataset.features  # [images, views, width]
    views = torch.cat(
        [
            model.clip.visual_projection(pooled[i : i + 1024].to(args.device)).float()
            for i in range(0, len(pooled), 1024)
        ]
    )
    return build_keys(views)


@torch.no_grad()
def shared_keys_values(trainer, datasets, model_args, data_args, finetuning_args, directory, dim):
    """The shared fixed-size cache: optionally add this dataset, then keep only this dataset's slots."""
    header = {"checkpoint": model_args.model_name_or_path, "feature_dim": dim}
    size = finetuning_args.tip_cache_size
    shared = SharedCache.load(directory, size, header) or SharedCache(size, dim)
    name = data_args.dataset
    if finetuning_args.tip_new_dataset:
        shared.add(name, datasets.classnames, image_keys(trainer).cpu(), datasets.train.labels)
        if trainer.is_world_process_zero():
            shared.save(directory, header)
        logger.info_rank0(f"tip: added `{name}` to the shared cache ({size} slots, {len(shared.names)} labels).")
    keys, values = shared.restricted(name, datasets.classnames)
    logger.info_rank0(f"tip: {len(keys)} of the {size} shared slots hold `{name}`'s classes.")
    return keys, values


@torch.no_grad()
def attach_cache(trainer, datasets, model_args, data_args, finetuning_args) -> dict:
    """Put a TipCache on the model: reloaded when allowed and compatible, else built from the cached views."""
    model, args = trainer.model, trainer.args
    dim = model.clip.config.projection_dim
    header = cache_header(model_args, data_args, finetuning_args, args.seed, datasets.classnames, dim)
    directory = finetuning_args.tip_cache_dir or args.output_dir
    use_saved = finetuning_args.tip_load_cache and not finetuning_args.tip_fixed_cache
    tensors = load_cache(directory, header) if use_saved else None
    if finetuning_args.tip_fixed_cache:
        keys, values = shared_keys_values(trainer, datasets, model_args, data_args, finetuning_args, directory, dim)
    elif tensors is not None:
        keys, values = tensors["keys"], tensors["values"]
        logger.info_rank0(f"tip: reloaded the cache of {len(keys)} keys from {directory}.")
    else:
        keys = image_keys(trainer)
        values = cache_values(model, datasets.train, datasets.classnames, args.device)
        views = trainer.train_dataset.features.shape[1]
        logger.info_rank0(f"tip: cache of {len(keys)} keys from {views} augmented views per image.")
    learnable = finetuning_args.tip_finetune
    model.cache = TipCache(keys, values, finetuning_args.tip_alpha, finetuning_args.tip_beta, learnable).to(
        args.device
    )
    return header


def image_identity(image) -> str:
    """A file path (resolved) or a digest of in-memory bytes: what makes two samples the same image."""
    if isinstance(image, dict) and image.get("bytes") is not None:
        return "sha1:" + hashlib.sha1(image["bytes"]).hexdigest()
    path = image.get("path") if isinstance(image, dict) else image
    return os.path.realpath(str(path))


def check_disjoint(train, val, data_args) -> None:
    """The search must not see the cached images: their affinity to themselves would pick a too-large alpha."""
    cached = {image_identity(image) for image in train.samples.images}
    shared = sum(image_identity(image) in cached for image in val.samples.images)
    if shared:
        raise ValueError(
            f"val_dataset `{data_args.val_dataset}` shares {shared} of its {len(val)} images with dataset "
            f"`{data_args.dataset}` (the cache): use a validation split disjoint from the training images."
        )


@torch.no_grad()
def search(trainer, datasets, data_args, finetuning_args) -> dict[str, float]:
    """Grid search of beta and alpha on the validation split (never the test split): classification accuracy, or
    image-to-text Recall@1 for image_to_text."""
    check_disjoint(datasets.train, datasets.val, data_args)
    val_dataset = datasets.val
    model = trainer.model
    model.eval()
    features, labels = [], []
    for batch in trainer.get_eval_dataloader(val_dataset):
        batch = trainer._prepare_inputs(batch)
        with trainer.autocast_smart_context_manager():
            image = model.image_features(batch["pixel_values"]).float()
        if datasets.classnames is None:
            features.append(trainer.accelerator.gather_for_metrics(image))
            continue
        image, label = trainer.accelerator.gather_for_metrics((image, batch["labels"]))
        features.append(image)
        labels.append(label)
    features = torch.cat(features)
    affinity = features @ model.cache.keys.float().t()
    betas, alphas = tip_search_grid(finetuning_args.tip_search_scale, finetuning_args.tip_search_step)
    values = model.cache.values.float()
    if datasets.classnames is None:
        texts = model.encode_texts(val_dataset.input_ids, val_dataset.attention_mask).float()
        alpha, beta, metric = search_alpha_beta_i2t(
            features @ texts.t(), affinity, values @ texts.t(), val_dataset.caption_image, betas, alphas
        )
        name = "tip_search_val_i2t_r1"
    else:
        labels = torch.cat(labels)
        clip_logits = model.logit_scale().float() * features @ model.task.class_features.t()
        alpha, beta, metric = search_alpha_beta(clip_logits, affinity, values, labels, betas, alphas)
        name = "tip_search_val_accuracy"
    model.cache.alpha, model.cache.beta = alpha, beta
    logger.info_rank0(
        f"tip: search on {len(features)} validation images: alpha {alpha:.3f}, beta {beta:.3f}, {name} {metric:.4f}."
    )
    return {"tip_alpha": alpha, "tip_beta": beta, name: metric}


def save(trainer, header: dict) -> None:
    if trainer.is_world_process_zero():
        path = save_cache(
            trainer.model.cache,
            trainer.args.output_dir,
            {**header, "alpha": trainer.model.cache.alpha, "beta": trainer.model.cache.beta},
        )
        logger.info_rank0(f"tip: cache saved to {path}.")


class TipCacheCallback(TrainerCallback):
    """Tip-F: the learned keys travel with every checkpoint and come back on resume."""

    def __init__(self, header: dict):
        self.header = header

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        checkpoint = args.resume_from_checkpoint
        if checkpoint and os.path.isfile(os.path.join(checkpoint, CACHE_FILE)):
            with torch.no_grad():
                model.cache.keys.copy_(load_file(os.path.join(checkpoint, CACHE_FILE))["keys"].to(model.cache.keys))
            logger.info_rank0(f"tip: learned keys restored from {checkpoint}.")

    def on_save(self, args, state, control, model=None, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(checkpoint):
            save_cache(model.cache, checkpoint, self.header)
