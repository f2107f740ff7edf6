"""Wire the clip stage: arguments -> model -> data -> method -> task -> Trainer -> the method's run -> evaluate.

A fixed pipeline: what differs between methods and tasks lives in their classes (``methods``, ``tasks``)."""

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from llamafactory.extras import logging
from llamafactory.train.callbacks import LogCallback

from ..data import load_clip_datasets
from ..data.device_decode import use_device_decode
from ..data.image_cache import cache_training_images
from ..hparams.hp_search import check_hp_search
from ..hparams.output_dir import run_record, write_json_atomic
from ..hparams.parser import field_types, valid_keys
from ..methods import Run, get_method, saved_run
from ..methods.base import log_trainable
from ..model import ClipTaskModel, TextTokenizer, family_of, load_clip
from ..tasks import get_task
from .arguments import get_clip_train_args
from .callbacks import EpochCallback, FiniteLossCallback
from .hp_search import run_hp_search
from .trainer import ClipTrainer


logger = logging.get_logger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"

if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments
    from transformers import TrainerCallback

    from ..hparams import ClipDataArguments, ClipFinetuningArguments, ClipModelArguments


def run_clip(
    model_args: "ClipModelArguments",
    data_args: "ClipDataArguments",
    training_args: "TrainingArguments",
    finetuning_args: "ClipFinetuningArguments",
    callbacks: list["TrainerCallback"] | None = None,
) -> None:
    task_class = get_task(finetuning_args.clip_task)
    method = get_method(finetuning_args.finetuning_type)()
    path = model_args.model_name_or_path
    saved = saved_run(path)  # a run saved as a head over the checkpoint it names (Tip-Adapter's cache)
    if saved is not None:
        if training_args.do_train:
            raise ValueError(
                f"model_name_or_path: {path} is a saved {saved['method']} run (a head over {saved['checkpoint']}): "
                f"evaluate or predict with it, or train from {saved['checkpoint']}."
            )
        model_args = dataclasses.replace(model_args, model_name_or_path=saved["checkpoint"])
    clip, processor = load_clip(model_args)
    tokenizer = TextTokenizer(processor.tokenizer, family_of(clip.config))
    datasets = load_clip_datasets(data_args, task_class.name, training_args.seed, processor.image_processor, tokenizer)
    datasets.decode_on_device(use_device_decode(data_args.image_decode_device, training_args.device))
    if training_args.do_train:  # every rank holds every training image: its sampler's share changes each epoch
        workers = training_args.dataloader_num_workers
        cache_training_images(datasets.train, datasets.spec, data_args.image_cache, workers)
        method.see_data(datasets, tokenizer)
        clip = method.prepare(clip, finetuning_args, training_args)
    else:  # evaluate or predict the checkpoint as it is (a method would add untrained layers)
        clip.requires_grad_(False)
    tokenizer = tokenizer.for_model(clip)  # a CoOp context (trained now or reloaded) leaves slots in the prompts
    if tokenizer.context is not None:
        datasets.tokenize_captions(tokenizer)
    task = task_class.build(datasets, tokenizer, clip, finetuning_args)
    model = ClipTaskModel(clip, task, datasets.spec, model_args.interpolate_pos_encoding)
    if saved is not None:
        if saved["classnames"] != (datasets.classnames or []):
            raise ValueError(
                f"The head saved in {path} scores classes {saved['classnames'] or '(captions)'}, but this run's data "
                f"has {datasets.classnames or '(captions)'}: evaluate it on the data it was built on."
            )
        model.head = saved["head"]
    log_trainable(model)
    run = Run(model_args, data_args, training_args, finetuning_args, datasets, processor, model)
    run.trainer = ClipTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.train,
        eval_dataset=datasets.eval,
        processing_class=processor,
        callbacks=[FiniteLossCallback(), EpochCallback(), *(callbacks or []), *method.callbacks(run)],
        optim_args=finetuning_args,
        run_record=run_record(model_args, data_args, training_args, finetuning_args),
    )
    task.setup(model)  # on the device the Trainer placed the model on
    method.run(run)
    if training_args.do_eval:
        metrics = run.trainer.evaluate()
        run.trainer.log_metrics("eval", metrics)
        run.trainer.save_metrics("eval", metrics)
    if training_args.do_predict:
        predict(run)


def predict(run: Run) -> None:
    """output_dir/predictions.jsonl (top-k per query), and the task's metrics on the predict set as predict_*."""
    trainer, data_args = run.trainer, run.data_args
    rows, metrics = trainer.predictions(run.datasets.predict, data_args.predict_top_k)
    if trainer.is_world_process_zero():
        path = os.path.join(run.training_args.output_dir, PREDICTIONS_FILE)
        os.makedirs(run.training_args.output_dir, exist_ok=True)
        write_json_atomic(path, rows, lines=True)
        logger.info_rank0(f"Predictions for {len(rows)} queries of {data_args.predict_dataset} written to {path}.")
    trainer.log_metrics("predict", metrics)
    trainer.save_metrics("predict", metrics)


def run_clip_training_function(config: dict[str, Any]) -> None:
    """Stands in for LLaMA-Factory's ``_training_function`` when ``stage: clip``."""
    parsed = get_clip_train_args(config.get("args"))
    model_args, data_args, training_args, finetuning_args = parsed
    if finetuning_args.hp_search is not None:  # trials on the validation split, then the best keys retrained
        spec = check_hp_search(parsed, field_types(), valid_keys())
        run_hp_search(config.get("args"), parsed, spec, list(config.get("callbacks") or []))
        return
    callbacks = list(config.get("callbacks") or []) + [LogCallback()]
    run_clip(model_args, data_args, training_args, finetuning_args, callbacks)
    if dist.is_initialized() and not training_args.use_ray:  # Ray tears its process group down itself
        # rank 0 may still be writing results: a rank that tore the group down and exited meanwhile could leave
        # rank 0's transport threads with a closed peer (seen once as a SIGABRT at exit under gloo)
        dist.barrier()
        dist.destroy_process_group()
