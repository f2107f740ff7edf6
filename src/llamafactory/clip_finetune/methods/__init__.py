"""One registry from ``finetuning_type`` to a method: what trains, on top of any task."""

from ..hparams.finetuning_args import is_set
from .adapter import AdapterMethod
from .base import Method, Run
from .bias import BiasMethod
from .coop import CoopMethod
from .full import FullMethod
from .lora import ClipLoraMethod, LoraMethod
from .probe.fit import check_probe_args
from .probe.method import LinearProbeMethod
from .prompt import PromptMethod
from .tip import TipMethod


METHODS: dict[str, type[Method]] = {
    method.name: method
    for method in (
        FullMethod,
        BiasMethod,
        LoraMethod,
        ClipLoraMethod,
        AdapterMethod,
        PromptMethod,
        CoopMethod,
        TipMethod,
        LinearProbeMethod,
    )
}


def get_method(finetuning_type: str) -> type[Method]:
    if finetuning_type not in METHODS:
        raise ValueError(f"finetuning_type: `{finetuning_type}` is not one of {sorted(METHODS)}.")
    return METHODS[finetuning_type]


def saved_run(path: str) -> dict | None:
    """The run saved at ``path`` as a head over a checkpoint, by whichever method saved it (None: a checkpoint)."""
    return next((run for method in METHODS.values() if (run := method.saved_run(path)) is not None), None)


def _having(flag: str) -> list[str]:
    """The registered methods with ``flag`` set, by name."""
    return sorted(name for name, method in METHODS.items() if getattr(method, flag))


def check_method_args(args: tuple, task: type) -> type[Method]:
    """What holds for every method, then the method's own checks and defaults; returns the method."""
    _, data_args, training_args, f = args
    method = get_method(f.finetuning_type)
    for other in METHODS.values():
        if other is method:
            continue
        for key, why in other.own_keys.items():
            if key in method.own_keys:
                continue  # shared with this method (clip_lora reads lora's keys)
            if is_set(f, key):
                reason = why.format(method=method.name) if why else f"this run's finetuning_type is {method.name}"
                raise ValueError(f"{key} applies to {other.name}: {reason}; remove it or change finetuning_type.")
    if f.abs and not method.selectable:
        usable = " or ".join(_having("selectable"))
        raise ValueError(f"abs selects among existing weights: use it with {usable}, not {method.name}.")
    if f.wise_ft_alphas:
        if not method.weight_delta:
            raise ValueError(
                f"wise_ft_alphas interpolates changed weights: use it with {', '.join(_having('weight_delta'))}, "
                f"not {method.name} "
                "(its result is new computation, not a change of the zero-shot weights)."
            )
        if not (training_args.do_train and data_args.val_dataset):
            raise ValueError("wise_ft_alphas picks alpha on the validation split: set do_train and val_dataset.")
        if any(not 0 <= alpha <= 1 for alpha in f.wise_ft_alphas):
            raise ValueError(f"wise_ft_alphas must lie in [0, 1], got {f.wise_ft_alphas}.")
        if training_args.fsdp or training_args.deepspeed:  # sharded tensors: refused before training, not after
            raise ValueError(
                "wise_ft_alphas interpolates whole tensors: run it without FSDP or DeepSpeed (DDP works)."
            )
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = method.stops_gradients(f)
    check_probe_args(args, task, method)
    method.check(args, task)
    return method


__all__ = ["METHODS", "Method", "Run", "check_method_args", "get_method"]
