"""One registry from ``finetuning_type`` to a method: what trains, on top of any task."""

from .adapter import AdapterMethod
from .bias import BiasMethod
from .full import FullMethod
from .lora import LoraMethod
from .prompt import PromptMethod
from .tip import TipMethod


METHODS = {
    "full": FullMethod,
    "bias": BiasMethod,
    "lora": LoraMethod,
    "adapter": AdapterMethod,
    "prompt": PromptMethod,
    "tip": TipMethod,
}


def get_method(finetuning_type: str):
    if finetuning_type not in METHODS:
        raise ValueError(f"finetuning_type: `{finetuning_type}` is not one of {sorted(METHODS)}.")
    return METHODS[finetuning_type]()


def checkpoint_files(finetuning_args) -> tuple[str, ...]:
    """What a checkpoint of this run must hold besides the Trainer's files: the method's state, ABS's selection."""
    from .abs import SELECTION_FILE

    files = get_method(finetuning_args.finetuning_type).checkpoint_files(finetuning_args)
    return files + ((SELECTION_FILE,) if finetuning_args.abs else ())


__all__ = ["METHODS", "checkpoint_files", "get_method"]
