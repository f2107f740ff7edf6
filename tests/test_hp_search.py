"""``hp_search``: Optuna trials of the stage on the validation split, pruning, a resumable study, the best keys as a
ready-to-run yaml retrained once on the test split."""

import statistics

import optuna
import pytest
import yaml
from conftest import base_args, read_json
from llamafactory.train.tuner import run_exp

import llamafactory.clip_finetune.data.loader as loader
from llamafactory.clip_finetune.train.arguments import check_clip_args


SPACE = {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True}, "lora_rank": {"choices": [2, 4]}}


def search_args(out, **search):
    keys = dict(
        finetuning_type="lora", val_dataset="fashion_mnist_val", num_train_epochs=3, image_size=32, save_strategy="no"
    )
    return base_args(out, **keys, hp_search={"space": SPACE, "n_trials": 3, "seed": 0, **search})


def trials(out):
    study = optuna.load_study(study_name="clip", storage=f"sqlite:///{out / 'hp_search' / 'study.db'}")
    return study.get_trials(deepcopy=False)


@pytest.mark.slow
def test_a_search_chooses_on_validation_and_evaluates_the_test_split_once_at_the_end(tmp_path, monkeypatch):
    read = []
    original = loader.read_samples
    monkeypatch.setattr(loader, "read_samples", lambda attr: read.append(attr.name) or original(attr))
    out = tmp_path / "search"
    run_exp(search_args(out))
    assert read.count("fashion_mnist_test") == 1 and read[-1] in ("fashion_mnist_test", "fashion_mnist_val")
    last_test = max(i for i, name in enumerate(read) if name == "fashion_mnist_test")
    assert read.index("fashion_mnist_test") == last_test > len(read) - 4  # only the final run read it
    found = trials(out)
    assert len(found) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in found)
    for t in found:  # each trial's value is its own validation accuracy, evaluated every epoch
        folder = out / "hp_search" / "trials" / f"trial-{t.number}"
        assert t.value == read_json(folder / "all_results.json")["eval_accuracy"]
        history = read_json(folder / "trainer_state.json")["log_history"]
        assert [row["epoch"] for row in history if "eval_accuracy" in row] == [1.0, 2.0, 3.0]
    best = max(found, key=lambda t: t.value)
    config = yaml.safe_load((out / "hp_search" / "best.yaml").read_text())
    assert "hp_search" not in config and config["learning_rate"] == best.params["learning_rate"]
    assert config["lora_rank"] == best.params["lora_rank"]
    table = (out / "hp_search" / "trials.md").read_text()
    assert "(best)" in table and "learning_rate" in table
    final = read_json(out / "all_results.json")
    assert "eval_accuracy" in final and (out / "adapter_model.safetensors").is_file()
    again = tmp_path / "again"  # the yaml runs as it is and gives the same model
    run_exp({**config, "output_dir": str(again)})
    assert read_json(again / "all_results.json")["eval_accuracy"] == final["eval_accuracy"]


@pytest.mark.slow
def test_bad_trials_are_pruned_early(tmp_path):
    """A learning rate that learns nothing (1e-9) or one that diverges falls below the median of the finished trials
    at some epoch: the pruner stops it there, and the trial is recorded as pruned."""
    out = tmp_path / "search"
    space = {"learning_rate": {"choices": [3e-4, 1e-9, 3e-2]}}
    args = search_args(out, n_trials=8, startup_trials=1)
    args.update(hp_search={**args["hp_search"], "space": space}, finetuning_type="full")
    run_exp(args)
    found = trials(out)
    done = [t for t in found if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in found if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and done
    for t in pruned:
        epoch = max(t.intermediate_values)  # where it stopped
        earlier = [
            d.intermediate_values[epoch] for d in done if d.number < t.number and epoch in d.intermediate_values
        ]
        # MedianPruner: the trial's best value so far is below the median of the finished trials' values there
        assert earlier and max(t.intermediate_values.values()) < statistics.median(earlier)
        state = read_json(out / "hp_search" / "trials" / f"trial-{t.number}" / "trainer_state.json")
        assert state["epoch"] == epoch < 3  # stopped at the epoch it was pruned, before the last
        assert not list((out / "hp_search" / "trials" / f"trial-{t.number}").glob("*.safetensors"))  # weights gone


@pytest.mark.slow
def test_a_search_resumes_its_study_and_refuses_another_space(tmp_path):
    out = tmp_path / "search"
    run_exp(search_args(out, n_trials=2, retrain=False))
    assert not (out / "all_results.json").exists()  # retrain: false leaves the test split alone
    storage = f"sqlite:///{out / 'hp_search' / 'study.db'}"
    optuna.load_study(study_name="clip", storage=storage).ask()  # a trial a killed search left running
    run_exp({**search_args(out, n_trials=4, retrain=False), "overwrite_output_dir": True})
    states = [t.state for t in trials(out)]
    assert len(states) == 4 and states[2] == optuna.trial.TrialState.FAIL  # the interrupted one, then one more
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    other = {**search_args(out, space={"learning_rate": {"low": 1e-3, "high": 1e-2}}), "overwrite_output_dir": True}
    with pytest.raises(ValueError, match="holds a study of another search space"):
        run_exp(other)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(val_dataset=None), "optimizes on the validation split: set val_dataset"),
        (dict(val_dataset="fashion_mnist_test"), "is also eval_dataset: the search would choose on the test split"),
        (dict(space={"seed": {"choices": [1, 2]}}), "hp_search.space.seed: `seed` is fixed"),
        (dict(space={"eval_dataset": {"choices": ["a"]}}), "`eval_dataset` is fixed"),
        (dict(space={"learning_rat": {"low": 1, "high": 2}}), "`learning_rat` is not a key of the clip stage"),
        (dict(space={"learning_rate": {"low": 1e-2, "high": 1e-3}}), "low .* must be below high"),
        (dict(space={"learning_rate": {"low": 0, "high": 1e-3, "log": True}}), "a log scale needs low > 0"),
        (dict(space={"lora_rank": {"low": 1.5, "high": 8}}), "is an integer; give integer bounds"),
        (dict(space={"lr_scheduler_type": {"low": 1, "high": 2}}), "is not a number; search it with"),
        (dict(space={}), "name at least one key"),
        (dict(n_trials=0), "n_trials must be an integer of at least 1"),
        (dict(pruner="hyperband"), "is not one of"),
        (dict(trials=3), r"unknown key\(s\) \['trials'\]"),
        (dict(space={"num_shots": {"choices": [4, 8]}}), "`num_shots` is fixed"),
        (dict(space={"max_samples": {"low": 10, "high": 20}}), "`max_samples` is fixed"),
    ],
)
def test_bad_searches_are_refused_before_any_trial(tmp_path, change, message):
    args = search_args(tmp_path / "x")
    if "val_dataset" in change:
        args["val_dataset"] = change.pop("val_dataset")
    args["hp_search"].update(change)
    with pytest.raises(ValueError, match=message):
        check_clip_args(args)


def test_integer_bounds_of_a_float_key_search_whole_values():
    from llamafactory.clip_finetune.hparams.hp_search import parse_hp_search
    from llamafactory.clip_finetune.hparams.parser import field_types, valid_keys

    def dimension(spec):
        return parse_hp_search({"space": {"num_train_epochs": spec}}, field_types(), valid_keys()).dimensions[0]

    assert dimension({"low": 5, "high": 20}).step == 1
    assert dimension({"low": 5.0, "high": 20.0}).step is None
    assert dimension({"low": 5, "high": 20, "step": 5}).step == 5


def test_a_search_from_json_text_parses_as_a_mapping(tmp_path):
    """The web UI's extra arguments and the command line give hp_search as JSON text."""
    args = search_args(tmp_path / "x")
    args["hp_search"] = '{"space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": true}}, "n_trials": 2}'
    check_clip_args(args)
    args["hp_search"] = "{space: "
    with pytest.raises(ValueError, match="hp_search: not valid JSON"):
        check_clip_args(args)
