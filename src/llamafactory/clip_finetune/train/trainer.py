"""HF ``Trainer`` for CLIP tasks: task-defined evaluation, and checkpoints that are plain CLIP checkpoints."""

import json
import math
import os
from typing import TYPE_CHECKING, Any

import accelerate
import torch
from accelerate.utils import DistributedType
from llamafactory.extras import logging
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.datasets import CachedViewsDataset, collate, collated
from ..data.device_decode import assemble
from ..hparams.output_dir import RUN_RECORD, write_json_atomic
from ..tasks.contrastive import cached_step
from .schedule import epoch_lr_scheduler


if TYPE_CHECKING:
    from ..hparams import ClipFinetuningArguments


logger = logging.get_logger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
SAFE_ADAPTER = "adapter_model.safetensors"
OPTIM_LOGGED = ("lr", "betas", "eps", "weight_decay", "momentum", "dampening", "nesterov", "alpha")


class ClipTrainer(Trainer):
    """``self.model`` is a ``ClipTaskModel``; what gets saved is its ``clip`` (loadable by its family's class:
    ``CLIPModel``, ``SiglipModel``, ...)."""

    def __init__(
        self,
        *args: Any,
        optim_args: "ClipFinetuningArguments | None" = None,
        run_record: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        self.optim_args = optim_args
        self.run_record = run_record
        kwargs.setdefault("data_collator", collate)
        super().__init__(*args, **kwargs)
        if self.args.fsdp and not self.is_fsdp_enabled:  # accelerate drops it without a word
            state = self.accelerator.state
            raise ValueError(
                f"fsdp: {' '.join(option.value for option in self.args.fsdp)} was set, but accelerate "
                f"{accelerate.__version__} shards only processes on accelerators started by a launcher; this run is "
                f"{state.distributed_type.value} on {state.device} and would train unsharded. Remove fsdp (CPU "
                "processes train with DDP), or launch on GPUs (FORCE_TORCHRUN=1)."
            )
        # contrastive batches of N micro-batches (``cached_step``): the loader yields the whole batch
        self.micro_batches = getattr(optim_args, "contrastive_accumulation_steps", 1)
        if self.micro_batches > 1:
            if self.is_deepspeed_enabled:
                raise ValueError(
                    "contrastive_accumulation_steps > 1 runs several backward passes per step, which DeepSpeed's "
                    "engine turns into optimizer steps: use DDP or FSDP, or gradient_accumulation_steps."
                )
            self._train_batch_size *= self.micro_batches
            logger.info_rank0(
                f"contrastive_accumulation_steps: contrastive batches of {self._train_batch_size} pairs per device, "
                f"trained in {self.micro_batches} micro-batches of {self.args.train_batch_size} (cached features)."
            )

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        """With ``contrastive_accumulation_steps``: the batch's gradient from cached features, a micro-batch at a time
        (``tasks.contrastive.cached_step``); otherwise the Trainer's step."""
        if self.micro_batches <= 1:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        task = self.accelerator.unwrap_model(model).task
        share = self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager():
            loss = cached_step(
                lambda chunk: model(**chunk, features_only=True),
                task.loss_from_features,
                inputs,
                self.micro_batches,
                lambda surrogate: self.accelerator.backward(surrogate / share),
                lambda: self.accelerator.no_sync(model),
            )
        return loss / share

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The Trainer's device transfer, after the batch's JPEG files are decoded there (``image_decode_device``)."""
        return super()._prepare_inputs(assemble(inputs, self.args.device))

    def get_train_dataloader(self):
        """Cached features are in memory and gathered a batch at a time: no loader workers (they would only add
        pickling and start-up), no per-item collation, and no pinning (features kept on the GPU need none)."""
        dataset = self.train_dataset
        if not isinstance(dataset, CachedViewsDataset):
            return super().get_train_dataloader()
        loader = DataLoader(
            dataset,
            batch_size=self._train_batch_size,
            sampler=self._get_train_sampler(dataset),
            collate_fn=collated,
            drop_last=self.args.dataloader_drop_last,
            pin_memory=self.args.dataloader_pin_memory and dataset.features.device.type == "cpu",  # a host cache
        )
        return self.accelerator.prepare(loader)

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch, as the Trainer counts them: the loader's batches on one rank (the sampler
        splits the dataset across ranks, padding the last batch unless it is dropped) over the accumulation."""
        batch, world = self._train_batch_size, self.args.world_size
        size = len(self.train_dataset)
        batches = size // (batch * world) if self.args.dataloader_drop_last else math.ceil(size / (batch * world))
        return max(math.ceil(batches / self.args.gradient_accumulation_steps), 1)

    def create_optimizer(self, model: torch.nn.Module | None = None):
        """``clip_optim``: Dassl's optimizers, weight decay on every trainable parameter as Dassl does. ``model``: the
        module the Trainer prepared first when it delays the optimizer (FSDP): its parameters are the ones to hold."""
        name = getattr(self.optim_args, "clip_optim", None)
        if name is None or self.optimizer is not None:
            return super().create_optimizer(model)
        params = [p for p in (self.model if model is None else model).parameters() if p.requires_grad]
        lr, decay, o, eps = self.args.learning_rate, self.args.weight_decay, self.optim_args, self.args.adam_epsilon
        betas = (self.args.adam_beta1, self.args.adam_beta2)
        if name == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr, momentum=o.momentum, weight_decay=decay, dampening=o.sgd_dampening, nesterov=o.sgd_nesterov
            )
        elif name in ("adam", "adamw"):
            kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            self.optimizer = kind(params, lr, betas=betas, eps=eps, weight_decay=decay)
        else:
            self.optimizer = torch.optim.RMSprop(
                params, lr, momentum=o.momentum, weight_decay=decay, alpha=o.rmsprop_alpha, eps=eps
            )
        logger.info_rank0(
            f"clip_optim: {type(self.optimizer).__name__}("
            + ", ".join(f"{k}={v}" for k, v in self.optimizer.defaults.items() if k in OPTIM_LOGGED)
            + ")"
        )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if not getattr(self.optim_args, "epoch_lr_schedule", False) or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        steps_per_epoch = self.steps_per_epoch()  # T is the run's length in epochs
        total_epochs = max(math.ceil(num_training_steps / steps_per_epoch), 1)
        schedule = "cosine" if self.args.lr_scheduler_type == "cosine" else "constant"
        self.lr_scheduler = epoch_lr_scheduler(
            optimizer or self.optimizer,
            self.optim_args,
            self.args.learning_rate,
            steps_per_epoch,
            total_epochs,
            schedule,
        )
        return self.lr_scheduler

    def _clip_grad_norm(self, model: torch.nn.Module):
        """Clip over the optimizer's parameters: walking every frozen tensor of the model each step costs as much as a
        tiny model's optimizer step. FSDP and DeepSpeed clip through their own engines, so they keep the default."""
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return super()._clip_grad_norm(model)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        """The HF Trainer runs one more step when it resumes from a checkpoint at the run's last step (mid-epoch);
        such a resume has nothing left to train."""
        if self.state.global_step >= self.state.max_steps > 0:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The run's arguments and the method's state (callbacks with ``write_checkpoint(folder)``: Tip-F's keys,
        ABS's selection) go into the checkpoint first; the Trainer writes trainer_state.json last, so a checkpoint
        with every file whole (``hparams.output_dir.checkpoint_problem``) was written to the end."""
        if self.args.should_save:
            step = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), step)
            os.makedirs(folder, exist_ok=True)
            if self.run_record is not None:
                write_json_atomic(os.path.join(folder, RUN_RECORD), self.run_record)
            for callback in self.callback_handler.callbacks:
                if hasattr(callback, "write_checkpoint"):
                    callback.write_checkpoint(folder)
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        clip = self.accelerator.unwrap_model(self.model).clip
        if state_dict is not None:  # DeepSpeed/FSDP gathered the wrapper's state dict
            state_dict = {k[len("clip.") :]: v for k, v in state_dict.items() if k.startswith("clip.")}
        clip.save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        clip = self.accelerator.unwrap_model(model or self.model).clip
        if isinstance(clip, PeftModel):  # a PEFT checkpoint holds the adapter only
            adapter = os.path.join(resume_from_checkpoint, SAFE_ADAPTER)
            if not os.path.isfile(adapter):
                raise ValueError(f"resume_from_checkpoint: `{resume_from_checkpoint}` holds no {SAFE_ADAPTER}.")
            saved = load_file(adapter)
            # what the adapter's state holds for this model, in the saved file's naming (as PEFT saves it)
            missing = sorted(set(get_peft_model_state_dict(clip)) - set(saved))
            result = set_peft_model_state_dict(clip, saved)
            if result.unexpected_keys or missing:
                raise ValueError(
                    f"{adapter} does not match this adapter (missing {missing[:5]}, "
                    f"unexpected {result.unexpected_keys[:5]}): resume with the method settings it was saved with."
                )
            logger.info_rank0(f"Loaded adapter weights from {resume_from_checkpoint}.")
            return
        index = os.path.join(resume_from_checkpoint, SAFE_INDEX)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(resume_from_checkpoint, SAFE_WEIGHTS)):
            files = [SAFE_WEIGHTS]
        else:
            raise ValueError(f"resume_from_checkpoint: `{resume_from_checkpoint}` holds no {SAFE_WEIGHTS}.")
        state_dict = {}
        for name in files:
            state_dict.update(load_file(os.path.join(resume_from_checkpoint, name)))
        clip.load_state_dict(state_dict, strict=True)
        logger.info_rank0(f"Loaded model weights from {resume_from_checkpoint}.")

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _task_pass(self, dataset: Any, call: Any) -> Any:
        """``call(model, batches, gather)`` over ``dataset`` in eval mode, without gradients, gathered across ranks."""
        model = self.model
        was_training = model.training
        model.eval()
        batches = (self._prepare_inputs(batch) for batch in self.get_eval_dataloader(dataset))
        with torch.no_grad(), self.autocast_smart_context_manager():
            result = call(model, batches, self.accelerator.gather_for_metrics)
        model.train(was_training)
        return result

    def predictions(self, dataset: Any, top_k: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The task's top-k rows for every item of ``dataset`` (in dataset order) and its metrics as predict_*,
        from one pass."""
        rows, metrics = self._task_pass(dataset, lambda m, b, g: m.task.predict(m, b, g, dataset, top_k))
        metrics = {f"predict_{key}": value for key, value in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return rows, metrics

    def evaluate(
        self, eval_dataset: Any | None = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        metrics = self._task_pass(dataset, lambda m, b, g: m.task.evaluate(m, b, g, dataset))
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
