from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ClipFinetuningArguments:
    r"""The stage, the task and the method (which parameters train)."""

    stage: Literal["clip"] = field(default="clip", metadata={"help": "Must be `clip` for this stage."})
    clip_task: Literal["classification", "image_to_text"] = field(
        default="classification", metadata={"help": "Image classification or image-to-text retrieval."}
    )
    finetuning_type: Literal["full"] = field(default="full", metadata={"help": "Which parameters train."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Keep the image tower frozen."})
    freeze_text_tower: bool | None = field(
        default=None,
        metadata={"help": "Keep the text tower frozen (default: true for classification, false for image_to_text)."},
    )
    train_logit_scale: bool = field(
        default=False, metadata={"help": "Learn the logit scale (default: keep the checkpoint's, train and eval)."}
    )
    plot_loss: bool = field(default=False, metadata={"help": "Save the training loss curve."})

    def __post_init__(self):
        if self.freeze_text_tower is None:
            self.freeze_text_tower = self.clip_task == "classification"
