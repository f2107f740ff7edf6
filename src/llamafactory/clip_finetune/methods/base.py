"""What a method is: its checks and defaults, which modules train, its callbacks, its checkpoint state, how its run
goes and what it exports. The pipeline (``train.workflow``) calls these and names no method."""

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from llamafactory.extras import logging
from llamafactory.extras.ploting import plot_loss
from torch import nn

from ..model.families import Family, family_of
from .feature_cache import cache_image_views
from .probe.fit import ProbeHeadCallback, export_head, install_probe
from .probe.head import HEAD_FILE
from .wise_ft import run_wise_ft, snapshot


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments
    from transformers import Trainer, TrainerCallback

    from ..data import ClipDatasets
    from ..hparams import ClipDataArguments, ClipFinetuningArguments, ClipModelArguments
    from ..model import ClipTaskModel
    from ..tasks import Task


logger = logging.get_logger(__name__)


@dataclass
class Run:
    """What the pipeline assembled for one run; a method reads what it needs from it."""

    model_args: "ClipModelArguments"
    data_args: "ClipDataArguments"
    training_args: "TrainingArguments"
    finetuning_args: "ClipFinetuningArguments"
    datasets: "ClipDatasets"
    processor: Any
    model: "ClipTaskModel"
    trainer: "Trainer | None" = None  # set once the Trainer is built (it receives the method's callbacks)


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(trainable)


def log_trainable(model: nn.Module) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info_rank0(
        f"trainable params: {trainable:,} || all params: {total:,} "
        f"|| trainable%: {100 * trainable / max(total, 1):.4f}"
    )
    logger.debug("trainable parameters: " + ", ".join(n for n, p in model.named_parameters() if p.requires_grad))


def tower_modules(clip: nn.Module, finetuning_args: "ClipFinetuningArguments") -> list[nn.Module]:
    """The towers a method may train: the image tower unless frozen, the text tower unless frozen."""
    family = family_of(clip.config)
    modules = []
    if not finetuning_args.freeze_vision_tower:
        modules += family.image_modules(clip)
    if not finetuning_args.freeze_text_tower:
        modules += family.text_modules(clip)
    return modules


def train(trainer: "Trainer", checkpoint: str | None) -> Any:
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


def report(trainer: "Trainer", metrics: dict[str, float]) -> None:
    """The run's training metrics (and on a GPU its peak memory, which the evaluation suite tabulates)."""
    if trainer.args.device.type == "cuda":
        metrics = {
            **metrics,
            "train_peak_gpu_memory_gib": torch.cuda.max_memory_allocated(trainer.args.device) / 2**30,
        }
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)


class Method:
    """One ``finetuning_type``. Subclasses set ``name`` and implement ``prepare``; the rest has defaults."""

    name: ClassVar[str] = ""
    # keys only this method reads -> why another method cannot use them ("" for the plain message); setting one
    # for another method is an error, so that nothing is silently ignored
    own_keys: ClassVar[dict[str, str]] = {}
    # whether Angle-Based Selection (``abs: true``) may run on top: it selects among the method's trainable weights
    selectable: ClassVar[bool] = False
    # with a frozen image tower, the default run caches its features per augmented view (``feature_cache``)
    caches_features: ClassVar[bool] = True
    # the method's result is a change of existing weights, which WiSE-FT (``wise_ft_alphas``) can interpolate
    weight_delta: ClassVar[bool] = False

    @classmethod
    def stops_gradients(cls, finetuning_args: "ClipFinetuningArguments") -> bool:
        """Whether some trainable parameters stop receiving gradients mid-run (DDP must then find unused ones)."""
        return False

    @classmethod
    def defaults(cls, finetuning_args: "ClipFinetuningArguments") -> None:
        """Defaults the method sets before the task sets its own (e.g. which towers train)."""

    @classmethod
    def check(cls, args: tuple, task: "type[Task]") -> None:
        """Argument checks and stage defaults of this method, run while parsing (model_args, data_args,
        training_args, finetuning_args), after the task's."""

    @classmethod
    def saved_run(cls, path: str) -> dict[str, Any] | None:
        """A run of this method saved as a head instead of a checkpoint (``{"method", "checkpoint", "head",
        "classnames"}``), or None: what evaluation, prediction and the API load from such an output dir."""
        return None

    def see_data(self, datasets: "ClipDatasets", tokenizer: Any) -> None:
        """What the method reads from the run's data before ``prepare`` (CoOp: the class count, and the tokenizer
        for its initialization phrase)."""

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        """Receives the loaded model (``CLIPModel``, ``SiglipModel``, ...) and returns the module to train (the same,
        or a PEFT wrapper)."""
        raise NotImplementedError

    def callbacks(self, run: Run) -> list["TrainerCallback"]:
        """Callbacks the Trainer is built with (LP-FT's head goes into every checkpoint)."""
        return [ProbeHeadCallback(run)] if run.finetuning_args.lp_ft else []

    def checkpoint_files(self, finetuning_args: "ClipFinetuningArguments") -> tuple[str, ...]:
        """Files of the method's own state that every checkpoint of it must hold to be resumed."""
        return (HEAD_FILE,) if finetuning_args.lp_ft else ()

    def run(self, run: Run) -> None:
        """Training: cache a frozen image tower's features, fit LP-FT's probe, train, save, export, report, plot."""
        args, trainer = run.training_args, run.trainer
        if not args.do_train:
            return
        f = run.finetuning_args
        if self.caches_features and f.feature_cache and run.model.family.pooled_frozen(run.model.clip):
            trainer.train_dataset = cache_image_views(trainer, trainer.train_dataset, f.feature_cache_views)
        zero_shot = snapshot(self.delta_parameters(run.model.clip)) if f.wise_ft_alphas else None
        metrics = install_probe(run, trainable=True) if f.lp_ft else {}  # LP-FT: the probe first, then training
        metrics.update(train(trainer, args.resume_from_checkpoint).metrics)
        if zero_shot is not None:
            metrics.update(run_wise_ft(run, self, zero_shot))
        trainer.save_model()
        if trainer.is_world_process_zero():
            self.export(run)
            if f.lp_ft:
                export_head(run, "lp_ft")
        report(trainer, metrics)
        trainer.save_state()
        if trainer.is_world_process_zero() and f.plot_loss:
            metric = f"eval_{run.model.task.main_metric}"
            plot_loss(args.output_dir, keys=["loss"] + ([metric] if args.eval_strategy != "no" else []))

    def delta_parameters(self, clip: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters whose change is the method's result (``weight_delta`` methods): the trainable ones."""
        return {name: p for name, p in clip.named_parameters() if p.requires_grad}

    def export(self, run: Run) -> None:
        """Extra artifacts after training (rank 0 only), beside the saved model."""

    @staticmethod
    def check_trainable(clip: nn.Module, training_args: "TrainingArguments", why: str = "both towers are frozen"):
        if training_args.do_train and not any(p.requires_grad for p in clip.parameters()):
            raise ValueError(f"Nothing to train: {why}.")


class PeftMethod(Method):
    """A method whose new layers PEFT owns: ``peft_config`` says which; everything else is frozen by PEFT."""

    def peft_config(self, finetuning_args: "ClipFinetuningArguments", family: "type[Family]") -> Any:
        """The PEFT config of this method on a model of ``family`` (which names its modules)."""
        raise NotImplementedError

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(clip, self.peft_config(finetuning_args, family_of(clip.config)))
