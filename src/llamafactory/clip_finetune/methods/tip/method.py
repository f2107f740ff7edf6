"""Tip-Adapter's method: the whole CLIP is frozen; a cache (a head on the image features) is what adapts.

Its run: build (or reload) the cache, optionally learn its keys (Tip-Adapter-F), optionally search alpha and beta
on the validation split, save the cache. The task decides the cache's values and the search's objective.
"""

from dataclasses import fields
from typing import TYPE_CHECKING, Any

from torch import nn
from transformers import TrainerCallback

from ...hparams import ClipFinetuningArguments
from ..base import Method, Run, report, set_trainable, train
from .cache import CACHE_FILE, tip_run
from .run import TipCacheCallback, search


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments


TIP_CROP_SCALE = [0.5, 1.0]  # the paper code's cache views: random resized crops of 50-100% of the area


class TipMethod(Method):
    name = "tip"
    own_keys = {f.name: "" for f in fields(ClipFinetuningArguments) if f.name.startswith("tip_")}
    caches_features = False  # the cache callback encodes its views itself (sharded across ranks)

    @classmethod
    def check(cls, args: tuple, task: Any) -> None:
        _, data_args, training_args, f = args
        if not training_args.do_train:
            raise ValueError("finetuning_type tip builds its cache from `dataset`: set do_train: true.")
        if f.tip_search_best and not data_args.val_dataset:
            raise ValueError("tip_search_best searches on the validation split: set val_dataset (never the test set).")
        if f.tip_fixed_cache and not task.has_classes:
            raise ValueError(
                f"tip_fixed_cache holds class labels: use it with a task that has classes, not {task.name}."
            )
        if f.classification_loss != "cross_entropy":
            raise ValueError("tip learns its cache with cross-entropy over the classes: remove classification_loss.")
        if len(f.tip_search_scale) != 2 or len(f.tip_search_step) != 2 or min(f.tip_search_step) < 1:
            raise ValueError("tip_search_scale and tip_search_step take two values each: [beta, alpha].")
        for key in ("tip_augment_epoch", "tip_cache_size"):
            if getattr(f, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(f, key)}.")
        if data_args.crop_scale is None:
            data_args.crop_scale = list(TIP_CROP_SCALE)

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        set_trainable(clip, False)
        return clip

    def callbacks(self, run: Run) -> list[TrainerCallback]:
        self.cache = TipCacheCallback(run)
        return [self.cache]

    def checkpoint_files(self, finetuning_args: "ClipFinetuningArguments") -> tuple[str, ...]:
        return (CACHE_FILE,) if finetuning_args.tip_finetune else ()

    @classmethod
    def saved_run(cls, path: str) -> dict | None:
        return tip_run(path)

    def run(self, run: Run) -> None:
        trainer, f = run.trainer, run.finetuning_args
        self.cache.build()
        metrics = {}
        if f.tip_finetune:
            metrics.update(train(trainer, run.training_args.resume_from_checkpoint).metrics)
            trainer.save_state()
        if f.tip_search_best:
            metrics.update(search(trainer, run.datasets, run.data_args, f))
        self.cache.save()
        if metrics:
            report(trainer, metrics)
