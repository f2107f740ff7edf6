"""``hp_search``: Optuna trials of the stage itself, chosen on the validation split; then the best trial's keys are
retrained into ``output_dir`` and evaluated once on ``eval_dataset``.

Optuna directly, not ``Trainer.hyperparameter_search``: a trial here is a whole run of the pipeline (the method's
checks, caches, PEFT layers, Tip-Adapter's search, WiSE-FT's alphas), which a ``model_init`` cannot express, and a
study in SQLite resumes after a kill. Each trial evaluates ``val_dataset`` at every epoch (its ``eval_dataset`` is the
validation split), reports it to Optuna and stops early when the pruner says so.
"""

import csv
import io
import json
import os
from typing import Any

import yaml
from llamafactory.extras import logging
from llamafactory.train.callbacks import LogCallback
from transformers import TrainerCallback

from ..hparams.hp_search import SearchSpec
from ..hparams.output_dir import write_json_atomic
from ..tasks import get_task
from .arguments import get_clip_train_args


logger = logging.get_logger(__name__)

SEARCH_DIR = "hp_search"  # under output_dir: study.db, trials/, trials.csv, trials.md, best.yaml


class PruningCallback(TrainerCallback):
    """Reports each validation evaluation to the trial; stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric, self.pruned, self.reported = trial, f"eval_{metric}", False, set()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Once per epoch, numbered by epoch (trials of other batch sizes compare at the same point of training);
        the final evaluation after the last epoch repeats it, and an untrained run has none to report."""
        epoch = round(state.epoch or 0)
        if not metrics or self.metric not in metrics or not epoch or epoch in self.reported:
            return
        self.reported.add(epoch)
        self.trial.report(metrics[self.metric], epoch)
        if self.trial.should_prune():
            self.pruned = True
            control.should_training_stop = True


def suggest(trial: Any, spec: SearchSpec) -> dict[str, Any]:
    params = {}
    for d in spec.dimensions:
        if d.kind == "choice":
            params[d.key] = trial.suggest_categorical(d.key, d.choices)
        elif d.kind == "int":
            params[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)
        else:
            params[d.key] = trial.suggest_float(d.key, d.low, d.high, step=d.step, log=d.log)
    return params


def trial_config(base: dict[str, Any], params: dict[str, Any], folder: str, val: str) -> dict[str, Any]:
    """A trial's run: the user's config with the sampled keys, evaluated on the validation split ``val`` every
    epoch; the test split and predictions stay out."""
    config = {k: v for k, v in base.items() if k not in ("hp_search", "predict_dataset", "do_predict")}
    config.update(params)
    config.update(
        output_dir=folder,
        overwrite_output_dir=True,
        eval_dataset=val,
        do_eval=True,
        eval_strategy="epoch",
        save_strategy="no",
        load_best_model_at_end=False,
    )
    return config


def drop_weights(folder: str) -> None:
    """A finished trial keeps its logs and results, not its weights (a full finetune's would add up to gigabytes
    over a search): ``best.yaml`` retrains the one that matters."""
    for name in os.listdir(folder):
        if name.endswith((".safetensors", ".bin", ".pt")):
            os.remove(os.path.join(folder, name))


def best_config(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The user's config with the best trial's keys, without ``hp_search``: ready to run on its own."""
    return {**{k: v for k, v in base.items() if k != "hp_search"}, **params}


def write_results(study: Any, directory: str) -> None:
    """trials.csv and trials.md: every trial, its state, its keys and its validation metric."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    rows = [
        [t.number, t.state.name.lower(), *(t.params.get(k, "") for k in keys), "" if t.value is None else t.value]
        for t in trials
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", *keys, "val_metric"])
    writer.writerows(rows)
    best = None
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        best = study.best_trial.number
    lines = ["| trial | state | " + " | ".join(keys) + " | val |", "|" + " --- |" * (len(keys) + 3)]
    for row in rows:
        mark = " (best)" if row[0] == best else ""
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + f"{mark} |")
    for name, text in (("trials.csv", buffer.getvalue()), ("trials.md", "\n".join(lines) + "\n")):
        tmp = os.path.join(directory, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(directory, name))


def open_study(spec: SearchSpec, directory: str, seed: int) -> Any:
    """The stored study (a resumed search), or a new one; a stored study of another search is refused. Trials a
    killed search left running are marked failed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.makedirs(directory, exist_ok=True)
    if spec.pruner == "median":  # a trial whose validation metric falls below the median of earlier trials' there
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials)
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name="clip",
        storage=f"sqlite:///{os.path.abspath(os.path.join(directory, 'study.db'))}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=spec.seed if spec.seed is not None else seed),
        pruner=pruner,
        load_if_exists=True,
    )
    described = json.loads(json.dumps(spec.describe()))
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", described)
    elif stored != described:
        raise ValueError(
            f"hp_search: {directory} holds a study of another search space; resuming would mix them. Use another "
            "output_dir, or delete that folder to start over."
        )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        logger.warning_rank0(f"hp_search: trial {trial.number} was interrupted; it counts as failed.")
    return study


def run_hp_search(raw: dict[str, Any] | list, parsed: tuple, spec: SearchSpec, callbacks: list) -> None:
    import optuna

    from .workflow import run_clip

    if not isinstance(raw, dict):
        raise ValueError("hp_search needs a yaml (or dict) config: trials are built from its keys.")
    _, data_args, training_args, finetuning_args = parsed
    output_dir = training_args.output_dir
    directory = os.path.join(output_dir, SEARCH_DIR)
    metric = get_task(finetuning_args.clip_task).main_metric
    study = open_study(spec, directory, training_args.seed)
    done = len(study.get_trials(deepcopy=False))
    errors: list[str] = []

    def objective(trial: Any) -> float:
        params = suggest(trial, spec)
        folder = os.path.join(directory, "trials", f"trial-{trial.number}")
        logger.info_rank0(f"hp_search: trial {trial.number} with {params}.")
        try:
            args = get_clip_train_args(trial_config(raw, params, folder, data_args.val_dataset))
        except ValueError as err:  # a combination the stage refuses: recorded, the search goes on
            errors.append(f"trial {trial.number}: {err}")
            raise
        pruning = PruningCallback(trial, metric)
        run_clip(*args, callbacks=[*callbacks, LogCallback(), pruning])
        with open(os.path.join(folder, "all_results.json"), encoding="utf-8") as f:
            value = json.load(f)[f"eval_{metric}"]
        drop_weights(folder)
        if pruning.pruned:
            raise optuna.TrialPruned()
        return value

    remaining = max(spec.n_trials - done, 0)
    if remaining:
        logger.info_rank0(
            f"hp_search: {remaining} trial(s) to run ({done} stored), objective val {metric} on "
            f"`{data_args.val_dataset}`; results in {directory}."
        )
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=spec.timeout,
            catch=(ValueError,),
            callbacks=[lambda s, t: write_results(s, directory)],
        )
    write_results(study, directory)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"hp_search: no trial finished. {errors[0] if errors else 'See the log.'}")
    best = study.best_trial
    config = best_config(raw, best.params)
    with open(os.path.join(directory, "best.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    summary = {"best_trial": best.number, f"best_val_{metric}": best.value, "best_params": best.params}
    write_json_atomic(os.path.join(directory, "best.json"), summary)
    logger.info_rank0(
        f"hp_search: best trial {best.number} of {len(study.trials)}: val {metric} {best.value:.4f} with "
        f"{best.params}; ready to run: {directory}/best.yaml."
    )
    if spec.retrain:  # the final model, in output_dir, evaluated once on the test split
        run_clip(*get_clip_train_args({**config, "output_dir": output_dir}), callbacks=[*callbacks, LogCallback()])
