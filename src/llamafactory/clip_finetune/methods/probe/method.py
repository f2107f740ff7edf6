"""``finetuning_type: linear_probe``: the whole dual encoder is frozen; a linear head on the image features is fitted
in closed form or full batch on cached features (no backbone pass per epoch) and saved beside the base checkpoint."""

from typing import TYPE_CHECKING, Any

from torch import nn

from ..base import Method, Run, report, set_trainable
from .fit import export_head, install_probe
from .head import probe_run


if TYPE_CHECKING:
    from llamafactory.hparams import TrainingArguments

    from ...hparams import ClipFinetuningArguments


PROBE_CROP_SCALE = [0.5, 1.0]  # LP++'s training views (its reference's random resized crops), as Tip-Adapter's


class LinearProbeMethod(Method):
    name = "linear_probe"
    caches_features = False  # its run encodes its views once itself

    @classmethod
    def check(cls, args: tuple, task: Any) -> None:
        _, data_args, training_args, _ = args
        if not training_args.do_train:
            raise ValueError("finetuning_type linear_probe fits its head on `dataset`: set do_train: true.")
        if training_args.resume_from_checkpoint:
            raise ValueError(
                "finetuning_type linear_probe takes no training steps, so it has no checkpoint to resume: remove "
                "resume_from_checkpoint (a rerun refits the head in seconds)."
            )
        if data_args.crop_scale is None:
            data_args.crop_scale = list(PROBE_CROP_SCALE)

    @classmethod
    def saved_run(cls, path: str) -> dict | None:
        return probe_run(path)

    def prepare(
        self, clip: nn.Module, finetuning_args: "ClipFinetuningArguments", training_args: "TrainingArguments"
    ) -> nn.Module:
        set_trainable(clip, False)
        return clip

    def run(self, run: Run) -> None:
        metrics = install_probe(run, trainable=False)
        if run.trainer.is_world_process_zero():
            export_head(run, self.name)
        report(run.trainer, metrics)
