"""Angle-Based Selection (after Hu et al., "Angle-based Search Space Shrinking for NAS", ECCV 2020).

After a warm-up of ordinary training, each unit (a module's trainable weight + bias, i.e. a "layer") is ranked by
the angle between its weights now and at the start, θ = arccos(<w0, w> / (|w0| |w|)). Per name group, the
``abs_keep`` units with the largest (or smallest) angles keep training; every other unit is reset to its starting
weights and frozen, and leaves the optimizer. The learning-rate schedule goes on (no second warm-up).

Rule for degenerate units: if |w0| or |w| is zero, θ = 0 when w equals w0 and π/2 otherwise. A one-element unit is
ranked like any other (its angle is 0, or π after a sign flip).
"""

import json
import math
import os
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from llamafactory.extras import logging
from torch import nn
from transformers import TrainerCallback

from ..hparams.output_dir import write_json_atomic
from ..model.families import family_of
from .base import Method, Run, log_trainable


if TYPE_CHECKING:
    from ..hparams import ClipFinetuningArguments


logger = logging.get_logger(__name__)

SELECTION_FILE = "abs_selection.json"


def trainable_units(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters grouped by the module that owns them, in model order."""
    units: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            units.setdefault(name.rpartition(".")[0], []).append((name, param))
    return units


def unit_angle(start: list[torch.Tensor], now: list[torch.Tensor]) -> float:
    start = [a.to(b.device) for a, b in zip(start, now, strict=True)]  # the snapshot is kept on the CPU
    dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(start, now, strict=True))
    norm0 = math.sqrt(sum(float(a.double().pow(2).sum()) for a in start))
    norm1 = math.sqrt(sum(float(b.double().pow(2).sum()) for b in now))
    if norm0 == 0.0 or norm1 == 0.0:
        same = all(torch.equal(a, b) for a, b in zip(start, now, strict=True))
        return 0.0 if same else math.pi / 2
    return math.acos(max(-1.0, min(1.0, dot / (norm0 * norm1))))


def unit_group(unit: str, group_names: list[str | tuple[str, ...]], grouped: bool) -> int:
    """The first group one of whose names the unit's name contains, else the last group."""
    if not grouped:
        return 0
    terms = [(names,) if isinstance(names, str) else names for names in group_names]
    return next((i for i, names in enumerate(terms) if any(t in unit for t in names)), len(terms))


def select_units(angles: dict[str, float], groups: dict[str, int], keep: int, top: bool) -> set[str]:
    """Per group, the ``keep`` units with the largest (``top``) or smallest angles; ties go by name."""
    kept: set[str] = set()
    for group in sorted(set(groups.values())):
        members = [unit for unit in angles if groups[unit] == group]
        members.sort(key=lambda unit: (-angles[unit] if top else angles[unit], unit))
        kept.update(members[:keep])
    return kept


class AbsCallback(TrainerCallback):
    """Snapshots the starting weights, selects at ``select_step``, then resets, freezes and prunes the optimizer."""

    def __init__(self, model: nn.Module, finetuning_args: "ClipFinetuningArguments", kept: list[str] | None = None):
        self.args = finetuning_args
        self.units = trainable_units(model)
        self.start = (
            {}
            if kept is not None
            else {unit: [p.detach().to("cpu", copy=True) for _, p in params] for unit, params in self.units.items()}
        )
        family = family_of(model.config)  # a group named q_proj also holds Chinese-CLIP's BERT query layers
        terms = [family.names(name) for name in self.args.abs_group_name]
        self.groups = {unit: unit_group(unit, terms, self.args.abs_group) for unit in self.units}
        self.select_step: int | None = None
        self.kept = set(kept) if kept is not None else None  # already selected (resumed after the selection)

    def on_train_begin(self, args, state, control, **kwargs):
        steps_per_epoch = state.max_steps / max(state.num_train_epochs, 1)
        epochs = self.args.abs_warmup_epochs
        if epochs is None:  # the schedule's warm-up: Dassl-style epochs, else the Trainer's warm-up steps
            warmup = self.args.warmup_epochs if self.args.epoch_lr_schedule else None
            epochs = max(
                1.0, warmup if warmup is not None else args.get_warmup_steps(state.max_steps) / steps_per_epoch
            )
        self.select_step = max(1, math.ceil(epochs * steps_per_epoch))
        if self.kept is None and self.select_step >= state.max_steps:
            raise ValueError(
                f"abs: the selection would come at step {self.select_step} ({epochs:g} warm-up epochs) but the run "
                f"has {state.max_steps} steps; lower abs_warmup_epochs or train longer."
            )
        if self.kept is None:
            logger.info_rank0(f"abs: {len(self.units)} units train fully until step {self.select_step}.")

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.kept is None and state.global_step == self.select_step:
            self.select(args, state, model, optimizer)

    def write_checkpoint(self, folder: str) -> None:
        """Part of every checkpoint (``ClipTrainer``): the kept units, or null before the selection."""
        write_json_atomic(
            os.path.join(folder, SELECTION_FILE), {"kept": None if self.kept is None else sorted(self.kept)}
        )

    @torch.no_grad()
    def select(self, args, state, model: nn.Module, optimizer) -> None:
        angles = {unit: unit_angle(self.start[unit], [p for _, p in params]) for unit, params in self.units.items()}
        kept = select_units(angles, self.groups, self.args.abs_keep, self.args.abs_top)
        self._check_ranks_agree(kept)
        for unit, params in self.units.items():
            if unit not in kept:
                for (_, param), start in zip(params, self.start[unit], strict=True):
                    param.copy_(start.to(param.device))
                    param.requires_grad_(False)
                    param.grad = None
        dropped = [p for unit, params in self.units.items() if unit not in kept for _, p in params]
        prune_optimizer(optimizer, dropped)
        self.kept = kept
        self.start = {}  # the snapshot is no longer needed
        if state.is_world_process_zero:
            self._write(args.output_dir, state.global_step, angles, kept)
        log_trainable(model)

    def _check_ranks_agree(self, kept: set[str]) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, sorted(kept))
        if any(other != sorted(kept) for other in everyone):
            raise RuntimeError("abs: ranks selected different units; their weights are not synchronized.")
        logger.info_rank0(f"abs: the selection is identical on all {len(everyone)} ranks.")

    def _write(self, output_dir: str, step: int, angles: dict[str, float], kept: set[str]) -> None:
        names = list(self.args.abs_group_name) + ["others"] if self.args.abs_group else ["all"]
        record = {
            "step": step,
            "abs_top": self.args.abs_top,
            "abs_keep": self.args.abs_keep,
            "groups": names,
            "units": [
                {
                    "unit": unit,
                    "group": names[self.groups[unit]],
                    "angle": angles[unit],
                    "kept": unit in kept,
                    "parameters": [name for name, _ in self.units[unit]],
                }
                for unit in self.units
            ],
        }
        os.makedirs(output_dir, exist_ok=True)
        write_json_atomic(os.path.join(output_dir, SELECTION_FILE), record)
        per_group = {name: sum(1 for u in kept if names[self.groups[u]] == name) for name in names}
        logger.info_rank0(f"abs: kept {len(kept)} of {len(self.units)} units at step {step} {per_group}.")


def prune_optimizer(optimizer, dropped: list[nn.Parameter]) -> None:
    """Remove parameters and their state from the optimizer in place, so its schedule and wrappers carry on."""
    gone = {id(p) for p in dropped}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in gone]
    for param in dropped:
        optimizer.state.pop(param, None)


def freeze_to(model: nn.Module, kept: list[str]) -> None:
    """Resuming after the selection: the checkpoint holds the reset weights; freeze what was not kept."""
    for unit, params in trainable_units(model).items():
        if unit not in kept:
            for _, param in params:
                param.requires_grad_(False)


class SelectableMethod(Method):
    """A method whose trainable weights ABS may select among (``abs: true``): this option owns ABS's callback, its
    checkpoint state and the DDP setting it needs."""

    selectable = True
    weight_delta = True

    @classmethod
    def stops_gradients(cls, finetuning_args: "ClipFinetuningArguments") -> bool:
        return finetuning_args.abs  # frozen units leave the graph mid-run: DDP must look for unused parameters

    def callbacks(self, run: Run) -> list[TrainerCallback]:
        """Resuming from a checkpoint written after the selection re-freezes before the optimizer is built."""
        if not (run.finetuning_args.abs and run.training_args.do_train):
            return super().callbacks(run)
        clip = run.model.clip
        kept = load_selection(run.training_args.resume_from_checkpoint)
        if kept is not None:
            freeze_to(clip, kept)
            logger.info_rank0(f"abs: resumed after the selection; {len(kept)} units train.")
        return [*super().callbacks(run), AbsCallback(clip, run.finetuning_args, kept)]

    def checkpoint_files(self, finetuning_args: "ClipFinetuningArguments") -> tuple[str, ...]:
        return super().checkpoint_files(finetuning_args) + ((SELECTION_FILE,) if finetuning_args.abs else ())


def load_selection(checkpoint: str | None) -> list[str] | None:
    """The units kept in ``checkpoint`` (None: saved before the selection, or no checkpoint)."""
    if checkpoint is None:
        return None
    path = os.path.join(checkpoint, SELECTION_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            kept = json.load(f)["kept"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"resume_from_checkpoint: {path} is missing or damaged ({err}); an ABS checkpoint needs its selection."
        ) from None
    if kept is not None and not (isinstance(kept, list) and all(isinstance(u, str) for u in kept)):
        raise ValueError(f"resume_from_checkpoint: {path} does not hold a list of kept units.")
    return kept
