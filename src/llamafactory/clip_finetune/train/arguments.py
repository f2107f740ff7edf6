"""A run's arguments, resolved: a Dassl config merged in, parsed, then checked and completed by the task and the
method that will run, and the output folder checked against them (resume, or refuse another run's folder)."""

from typing import Any

import transformers
from llamafactory.extras import logging

from ..dassl import with_clip_config
from ..hparams.hp_search import check_hp_search
from ..hparams.output_dir import check_output_dir, lock_output_dir
from ..hparams.parser import ClipArgs, field_types, parse_clip_args, valid_keys
from ..methods import check_method_args, get_method
from ..tasks import get_task


logger = logging.get_logger(__name__)


def check_clip_args(args: dict[str, Any] | list[str]) -> ClipArgs:
    """Parse and check the arguments the way a run would, without a run's side effects (log levels, seeding,
    the output folder's lock): the web UI calls this before it launches anything."""
    parsed = parse_clip_args(with_clip_config(args))
    model_args, data_args, training_args, finetuning_args = parsed
    task = get_task(finetuning_args.clip_task)
    get_method(finetuning_args.finetuning_type).defaults(finetuning_args)
    task.check(data_args, finetuning_args)
    method = check_method_args(parsed, task)
    check_hp_search(parsed, field_types(), valid_keys())
    check_output_dir(*parsed, method().checkpoint_files(finetuning_args))
    return parsed


def get_clip_train_args(args: dict[str, Any] | list[str]) -> ClipArgs:
    model_args, data_args, training_args, finetuning_args = check_clip_args(args)
    if training_args.should_save:  # one process per run writes into output_dir
        lock_output_dir(training_args.output_dir)
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
        transformers.utils.logging.enable_default_handler()
        transformers.utils.logging.enable_explicit_format()
    transformers.set_seed(training_args.seed)
    if training_args.device.type != "cuda":  # pinned memory and asynchronous copies only serve a CUDA device
        training_args.dataloader_pin_memory = False
        training_args.accelerator_config.non_blocking = False
    logger.info(
        f"Process rank: {training_args.process_index}, world size: {training_args.world_size}, "
        f"device: {training_args.device}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"task: {finetuning_args.clip_task}, method: {finetuning_args.finetuning_type}"
    )
    return model_args, data_args, training_args, finetuning_args
