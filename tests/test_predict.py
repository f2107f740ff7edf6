"""do_predict: output_dir/predictions.jsonl with top-k per query, predict_* metrics, and a saved PEFT run reloaded from
its output dir for prediction."""

import json

import pytest
from conftest import DATA_DIR, ROOT, TINY_CLIP, base_args, i2t_args, read_json, run_cli
from llamafactory.train.tuner import run_exp


def rows(output_dir):
    return [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_classification_predictions_agree_with_the_metrics(tmp_path):
    run_exp(base_args(tmp_path, do_predict=True, predict_dataset="fashion_mnist_test", predict_top_k=3))
    found = rows(tmp_path)
    assert len(found) == 200
    for row in found:
        scores = [entry["score"] for entry in row["top_k"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
        assert row["image"].endswith(".png") and row["label"]
    results = read_json(tmp_path / "all_results.json")
    top1 = sum(row["top_k"][0]["class"] == row["label"] for row in found) / len(found)
    assert top1 == pytest.approx(results["predict_accuracy"]) == pytest.approx(results["eval_accuracy"])
    top3 = sum(row["label"] in [e["class"] for e in row["top_k"]] for row in found) / len(found)
    assert top3 <= results["predict_top5_accuracy"] + 1e-9


def test_image_to_text_predictions_list_captions_and_images(tmp_path):
    run_exp(i2t_args(tmp_path, do_train=False, do_eval=False, do_predict=True, predict_dataset="emoji_captions_test"))
    found = rows(tmp_path)
    images = [r for r in found if r["query"] == "image"]
    captions = [r for r in found if r["query"] == "caption"]
    assert len(images) == 40 and len(captions) == 80
    results = read_json(tmp_path / "all_results.json")
    hits = sum(r["top_k"][0]["caption"] in r["captions"] for r in images) / len(images)
    assert hits == pytest.approx(results["predict_i2t_r1"])
    t2i = sum(r["top_k"][0]["image"] == r["image"] for r in captions) / len(captions)
    assert t2i == pytest.approx(results["predict_t2i_r1"])


def test_a_saved_peft_run_predicts_from_its_output_dir(tmp_path):
    common = dict(do_predict=True, predict_dataset="fashion_mnist_test", finetuning_type="lora", learning_rate=1e-2)
    run_exp(base_args(tmp_path / "run", **common))
    reload = base_args(tmp_path / "again", do_train=False, model_name_or_path=str(tmp_path / "run"), **common)
    reload.pop("dataset")
    run_exp(reload)
    assert rows(tmp_path / "again") == rows(tmp_path / "run")
    first, again = read_json(tmp_path / "run" / "all_results.json"), read_json(tmp_path / "again" / "all_results.json")
    assert again["predict_accuracy"] == first["predict_accuracy"] != read_json_zero_shot(tmp_path)


def read_json_zero_shot(tmp_path):
    run_exp(base_args(tmp_path / "zero", do_train=False, do_predict=True, predict_dataset="fashion_mnist_test"))
    return read_json(tmp_path / "zero" / "all_results.json")["predict_accuracy"]


def test_predict_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="do_predict needs `predict_dataset`"):
        run_exp(base_args(tmp_path / "a", do_predict=True))
    with pytest.raises(ValueError, match="predict_top_k must be at least 1, got 0"):
        run_exp(base_args(tmp_path / "k", do_predict=True, predict_dataset="fashion_mnist_test", predict_top_k=0))
    with pytest.raises(ValueError, match="predict_dataset is read by do_predict"):
        run_exp(base_args(tmp_path / "b", predict_dataset="fashion_mnist_test"))
    run_exp(base_args(tmp_path / "lora", finetuning_type="lora", do_eval=False))
    with pytest.raises(ValueError, match="holds a PEFT adapter"):
        run_exp(base_args(tmp_path / "c", model_name_or_path=str(tmp_path / "lora")))


def test_the_predict_example_runs_from_the_cli(tmp_path):
    done = run_cli(
        [
            "train",
            str(ROOT / "examples" / "clip" / "predict.yaml"),
            f"model_name_or_path={TINY_CLIP}",
            f"dataset_dir={DATA_DIR}",
            f"output_dir={tmp_path}",
        ]
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert len(rows(tmp_path)) == 200 and len(rows(tmp_path)[0]["top_k"]) == 5
    assert "predict_accuracy" in read_json(tmp_path / "all_results.json")


@pytest.mark.slow
def test_a_tip_adapter_run_reloads_from_its_output_dir_for_evaluation_and_prediction(tmp_path):
    """A Tip-Adapter run saves a cache, not a checkpoint: `model_name_or_path: <its output dir>` evaluates and
    predicts with the checkpoint its cache names and the cache as the head, as the run itself did; training from it
    is refused with the way out."""
    run = tmp_path / "tip"
    keys = {"finetuning_type": "tip", "val_dataset": "fashion_mnist_val", "tip_augment_epoch": 1, "tip_alpha": 5.0}
    run_exp(base_args(run, do_predict=True, predict_dataset="fashion_mnist_test", **keys))
    again = tmp_path / "again"
    run_exp(
        base_args(
            again,
            model_name_or_path=str(run),
            do_train=False,
            dataset=None,
            num_shots=None,
            do_predict=True,
            predict_dataset="fashion_mnist_test",
        )
    )
    assert read_json(again / "all_results.json")["eval_accuracy"] == pytest.approx(
        read_json(run / "all_results.json")["eval_accuracy"]
    )
    assert (again / "predictions.jsonl").read_text() == (run / "predictions.jsonl").read_text()
    with pytest.raises(ValueError, match="is a saved tip run .* train from"):
        run_exp(base_args(tmp_path / "train", model_name_or_path=str(run)))
    with pytest.raises(ValueError, match=r"scores classes \['ankle boot'.*but this run's data has \(captions\)"):
        run_exp(i2t_args(tmp_path / "captions", model_name_or_path=str(run), do_train=False))
