"""Wire the clip stage: arguments -> model -> data -> method -> Trainer -> train / evaluate / save."""

import json
import os
from typing import Any

from llamafactory.extras import logging
from llamafactory.extras.ploting import plot_loss
from llamafactory.train.callbacks import LogCallback

from ..data import load_clip_datasets
from ..hparams.output_dir import run_record
from ..hparams.parser import get_clip_train_args
from ..methods import get_method
from ..methods.abs import abs_callback
from ..methods.base import log_trainable
from ..methods.tip import run as tip
from ..model import ClipTaskModel, load_clip
from ..tasks import ClassificationTask, ImageToTextTask
from .callbacks import EpochCallback, FiniteLossCallback
from .feature_cache import image_tower_frozen
from .trainer import ClipTrainer


logger = logging.get_logger(__name__)


def build_task(finetuning_args: Any, datasets: Any, tokenizer: Any, clip: Any):
    if finetuning_args.clip_task == "classification":
        text_trainable = any(p.requires_grad for n, p in clip.named_parameters() if "text_" in n)
        return ClassificationTask(datasets.classnames, datasets.templates, tokenizer, text_trainable)
    return ImageToTextTask()


def export_merged(peft_model: Any, processor: Any, path: str) -> None:
    """LoRA folds into the base weights: a standalone checkpoint that ``CLIPModel.from_pretrained`` loads."""
    import copy

    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.save_pretrained(path)
    processor.save_pretrained(path)
    logger.info_rank0(f"Merged LoRA into the base weights: {path}")


def feature_cache_views(clip: Any, finetuning_args: Any, training_args: Any) -> int | None:
    """Views to cache when the image tower is frozen (adapter, text-only methods), unless turned off.
    Tip-Adapter encodes its views in its cache callback (sharded across ranks), not here."""
    if finetuning_args.finetuning_type == "tip":
        return None
    use = finetuning_args.feature_cache and training_args.do_train and image_tower_frozen(clip)
    return finetuning_args.feature_cache_views if use else None


def run_clip(model_args, data_args, training_args, finetuning_args, callbacks: list[Any] | None = None) -> None:
    clip, processor = load_clip(model_args)
    datasets = load_clip_datasets(
        data_args, finetuning_args.clip_task, training_args.seed, processor.image_processor, processor.tokenizer
    )
    method = get_method(finetuning_args.finetuning_type)
    clip = method.prepare(clip, finetuning_args, training_args)
    callbacks = [FiniteLossCallback(), EpochCallback(), *(callbacks or [])]
    if finetuning_args.abs and training_args.do_train:
        callbacks.append(abs_callback(clip, finetuning_args, training_args))
    task = build_task(finetuning_args, datasets, processor.tokenizer, clip)
    model = ClipTaskModel(clip, task, datasets.spec, model_args.interpolate_pos_encoding)
    log_trainable(model)

    trainer = ClipTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.train,
        eval_dataset=datasets.eval,
        processing_class=processor,
        callbacks=callbacks,
        optim_args=finetuning_args,
        feature_cache_views=feature_cache_views(clip, finetuning_args, training_args),
        run_record=run_record(model_args, data_args, training_args, finetuning_args),
    )

    if finetuning_args.finetuning_type == "tip":
        run_tip(trainer, datasets, model_args, data_args, training_args, finetuning_args)
    elif training_args.do_train:
        result = train(trainer, training_args.resume_from_checkpoint)
        trainer.save_model()
        if finetuning_args.export_merged and trainer.is_world_process_zero():
            export_merged(model.clip, processor, os.path.join(training_args.output_dir, "merged"))
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        if trainer.is_world_process_zero() and finetuning_args.plot_loss:
            metric = "eval_accuracy" if finetuning_args.clip_task == "classification" else "eval_i2t_r1"
            keys = ["loss"] + ([metric] if training_args.eval_strategy != "no" else [])
            plot_loss(training_args.output_dir, keys=keys)

    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


def train(trainer, checkpoint: str | None):
    """``trainer.train``; a resume from the run's last checkpoint trains no step and reports no train loss."""
    start = None
    if checkpoint is not None:
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
            start = json.load(f)["global_step"]
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.state.global_step == start:
        result.metrics.pop("train_loss", None)
        logger.warning_rank0(f"{checkpoint} is the run's last step: nothing left to train.")
    return result


def run_tip(trainer, datasets, model_args, data_args, training_args, finetuning_args) -> None:
    """Training-free: build (or reload) the cache, optionally search alpha/beta. Tip-F: then learn the keys."""
    if not training_args.do_train:
        raise ValueError("finetuning_type tip builds its cache from `dataset`: set do_train: true.")
    cache = tip.TipCacheCallback(trainer, datasets, model_args, data_args, finetuning_args)
    trainer.add_callback(cache)
    cache.build()
    metrics = {}
    if finetuning_args.tip_finetune:
        metrics.update(train(trainer, training_args.resume_from_checkpoint).metrics)
        trainer.save_state()
    if finetuning_args.tip_search_best:
        metrics.update(tip.search(trainer, datasets, data_args, finetuning_args))
    cache.save()
    if metrics:
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)


def run_clip_training_function(config: dict[str, Any]) -> None:
    """Stands in for LLaMA-Factory's ``_training_function`` when ``stage: clip``."""
    import torch.distributed as dist

    model_args, data_args, training_args, finetuning_args = get_clip_train_args(config.get("args"))
    callbacks = list(config.get("callbacks") or []) + [LogCallback()]
    run_clip(model_args, data_args, training_args, finetuning_args, callbacks)
    if dist.is_initialized() and not training_args.use_ray:  # Ray tears its process group down itself
        # rank 0 may still be writing results: a rank that tore the group down and exited meanwhile could leave
        # rank 0's transport threads with a closed peer (seen once as a SIGABRT at exit under gloo)
        dist.barrier()
        dist.destroy_process_group()
