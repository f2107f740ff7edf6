from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ClipOptimArguments:
    r"""Dassl/CoOp-compatible optimizer and per-epoch learning-rate schedule (used by ``clip_config`` files).

    ``clip_optim`` unset: the Trainer's ``optim`` and ``lr_scheduler_type`` apply as usual.
    """

    clip_optim: Literal["sgd", "adam", "adamw", "rmsprop"] | None = field(
        default=None, metadata={"help": "Build this torch optimizer with Dassl's hyper-parameters (overrides optim)."}
    )
    momentum: float = field(default=0.9, metadata={"help": "sgd / rmsprop momentum."})
    sgd_dampening: float = field(default=0.0, metadata={"help": "sgd dampening."})
    sgd_nesterov: bool = field(default=False, metadata={"help": "sgd Nesterov momentum."})
    rmsprop_alpha: float = field(default=0.99, metadata={"help": "rmsprop smoothing constant."})
    epoch_lr_schedule: bool = field(
        default=False,
        metadata={"help": "Dassl schedule: the LR changes once per epoch (cosine over the epochs, or constant)."},
    )
    warmup_epochs: int = field(default=0, metadata={"help": "Epochs of warm-up before the schedule (epoch schedule)."})
    warmup_type: Literal["constant", "linear"] = field(
        default="linear", metadata={"help": "constant: hold warmup_cons_lr; linear: ramp from warmup_min_lr."}
    )
    warmup_cons_lr: float = field(default=1e-5, metadata={"help": "LR during a constant warm-up."})
    warmup_min_lr: float = field(default=1e-5, metadata={"help": "First LR of a linear warm-up."})
    warmup_recount: bool = field(
        default=True, metadata={"help": "Dassl's WARMUP_RECOUNT: the schedule starts counting after the warm-up."}
    )
