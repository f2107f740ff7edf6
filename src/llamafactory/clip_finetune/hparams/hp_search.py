"""``hp_search`` in the stage yaml: what may be searched, how, and on which split. Checked while parsing, so that a
bad space stops the run (and the web UI) before any trial."""

import json
import math
from dataclasses import dataclass
from typing import Any


# keys a trial may not change: the data splits and what selects their images (every trial is scored on the same
# validation images; the test split stays unseen), where it writes, what it is, and the seed (a search over seeds
# fits noise)
FIXED = {
    "dataset",
    "val_dataset",
    "eval_dataset",
    "predict_dataset",
    "dataset_dir",
    "num_shots",
    "max_samples",
    "subsample_classes",
    "output_dir",
    "overwrite_output_dir",
    "do_train",
    "do_eval",
    "do_predict",
    "model_name_or_path",
    "clip_task",
    "resume_from_checkpoint",
    "seed",
    "hp_search",
    "clip_config",
}
PRUNERS = ("median", "none")


@dataclass
class Dimension:
    """One searched key: a range (``low``..``high``, ``log`` scale, ``step``) or a list of ``choices``."""

    key: str
    kind: str  # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None


@dataclass
class SearchSpec:
    dimensions: list[Dimension]
    n_trials: int = 20
    timeout: float | None = None
    seed: int | None = None
    pruner: str = "median"
    startup_trials: int = 5  # trials that finish before the median pruner stops any
    retrain: bool = True

    def describe(self) -> dict[str, Any]:
        """What makes two searches the same (a stored study resumes only with the same spec)."""
        return {
            "space": {d.key: [d.kind, d.low, d.high, d.log, d.step, d.choices] for d in self.dimensions},
            "pruner": [self.pruner, self.startup_trials],
        }


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}.")
    return value


def _dimension(key: str, spec: Any, field_kind: type | None) -> Dimension:
    where = f"hp_search.space.{key}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: give {{low: .., high: ..}} (optionally log: true, step: ..) or {{choices: [..]}}.")
    if "choices" in spec:
        extra = set(spec) - {"choices"}
        if extra or not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ValueError(f"{where}: `choices` takes a non-empty list and nothing else.")
        return Dimension(key, "choice", choices=list(spec["choices"]))
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or "low" not in spec or "high" not in spec:
        raise ValueError(
            f"{where}: a range needs `low` and `high` (and optionally `log`, `step`); got {sorted(spec)}."
        )
    low, high = _number(f"{where}.low", spec["low"]), _number(f"{where}.high", spec["high"])
    if not low < high:
        raise ValueError(f"{where}: low ({low}) must be below high ({high}).")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}.log must be true or false.")
    if log and low <= 0:
        raise ValueError(f"{where}: a log scale needs low > 0.")
    step = spec.get("step")
    if step is not None and (_number(f"{where}.step", step) <= 0 or log):
        raise ValueError(f"{where}.step must be positive, and not combined with log.")
    kind = "int" if field_kind is int else "float"
    if kind == "float" and step is None and not log and all(type(spec[k]) is int for k in ("low", "high")):
        step = 1  # written as integers (num_train_epochs: {low: 5, high: 20}): whole values; 5.0 for a continuum
    if field_kind not in (int, float):
        raise ValueError(f"{where}: `{key}` is not a number; search it with {{choices: [..]}}.")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ValueError(f"{where}: `{key}` is an integer; give integer bounds.")
    return Dimension(key, kind, low, high, log, step)


def parse_hp_search(value: Any, field_types: dict[str, Any], valid: list[str]) -> SearchSpec:
    """The ``hp_search`` mapping as a ``SearchSpec``, or an error naming what is wrong and how to fix it."""
    if isinstance(value, str):  # JSON from the command line or the web UI's extra arguments
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"hp_search: not valid JSON ({err.msg} at character {err.pos}).") from None
    if not isinstance(value, dict):
        raise ValueError("hp_search takes a mapping: {space: {key: {low: .., high: ..}}, n_trials: .., ...}.")
    known = ("space", "n_trials", "timeout", "seed", "pruner", "startup_trials", "retrain")
    unknown = set(value) - set(known)
    if unknown:
        raise ValueError(f"hp_search: unknown key(s) {sorted(unknown)} ({', '.join(known)}).")
    space = value.get("space")
    if not isinstance(space, dict) or not space:
        raise ValueError(
            "hp_search.space: name at least one key to search, e.g. "
            "{learning_rate: {low: 1e-5, high: 1e-3, log: true}}."
        )
    dimensions = []
    for key, spec in space.items():
        if key in FIXED:
            raise ValueError(
                f"hp_search.space.{key}: `{key}` is fixed for a search (the splits, the output, the seed)."
            )
        if key not in valid:
            raise ValueError(f"hp_search.space.{key}: `{key}` is not a key of the clip stage.")
        kind = field_types.get(key)
        options = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
        dimensions.append(_dimension(key, spec, options[0] if len(options) == 1 else kind))
    n_trials, startup = value.get("n_trials", 20), value.get("startup_trials", 5)
    for key, count, least in (("n_trials", n_trials, 1), ("startup_trials", startup, 0)):
        if isinstance(count, bool) or not isinstance(count, int) or count < least:
            raise ValueError(f"hp_search.{key} must be an integer of at least {least}, got {count!r}.")
    timeout = value.get("timeout")
    if timeout is not None and _number("hp_search.timeout", timeout) <= 0:
        raise ValueError("hp_search.timeout is in seconds and must be positive.")
    seed = value.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"hp_search.seed must be an integer, got {seed!r}.")
    pruner = value.get("pruner", "median")
    if pruner not in PRUNERS:
        raise ValueError(f"hp_search.pruner: `{pruner}` is not one of {list(PRUNERS)}.")
    retrain = value.get("retrain", True)
    if not isinstance(retrain, bool):
        raise ValueError("hp_search.retrain must be true or false.")
    return SearchSpec(dimensions, n_trials, timeout, seed, pruner, startup, retrain)


def check_hp_search(parsed: tuple, field_types: dict[str, Any], valid: list[str]) -> SearchSpec | None:
    """The search's own checks: a validation split to optimize, distinct from the test split; one process."""
    _, data_args, training_args, f = parsed
    if f.hp_search is None:
        return None
    spec = parse_hp_search(f.hp_search, field_types, valid)
    if not data_args.val_dataset:
        raise ValueError("hp_search optimizes on the validation split: set val_dataset (never the test split).")
    if data_args.eval_dataset and set(data_args.eval_dataset.split(",")) & set(data_args.val_dataset.split(",")):
        raise ValueError(
            f"hp_search: val_dataset `{data_args.val_dataset}` is also eval_dataset: the search would choose on the "
            "test split. Give a validation split of its own."
        )
    if not training_args.do_train:
        raise ValueError("hp_search trains a run per trial: set do_train: true.")
    if training_args.world_size > 1:
        raise ValueError(
            "hp_search runs its trials one after another in one process: run it without torchrun, then train "
            "hp_search/best.yaml distributed."
        )
    return spec
