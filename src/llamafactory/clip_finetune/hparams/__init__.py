from .data_args import ClipDataArguments
from .finetuning_args import ClipFinetuningArguments
from .model_args import ClipModelArguments
from .parser import get_clip_train_args


__all__ = ["ClipDataArguments", "ClipFinetuningArguments", "ClipModelArguments", "get_clip_train_args"]
