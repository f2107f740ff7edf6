"""evaluation/suite.py on the bundled data: the CSV, the mean ± std table and the plot; a killed suite resumes without
redoing finished cells; a failed cell is reported while the others run; base-to-new reports base, new and HM."""

import csv
import json
import subprocess
import sys

import pytest
import yaml
from conftest import DATA_DIR, ROOT, TINY_CLIP


SUITE = str(ROOT / "evaluation" / "suite.py")
BASE = {
    "dataset_dir": str(DATA_DIR),
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 100,
    "num_train_epochs": 1,
    "report_to": "none",
    "save_strategy": "no",
    "dataloader_num_workers": 0,
}
DATASETS = {
    "fashion_mnist": {
        "dataset": "fashion_mnist_train",
        "val_dataset": "fashion_mnist_val",
        "eval_dataset": "fashion_mnist_test",
    }
}


def make_grid(tmp_path, protocol, methods, shots, seeds):
    return {
        "protocol": protocol,
        "model": str(TINY_CLIP),
        "output_dir": str(tmp_path / "out"),
        "base": BASE,
        "datasets": DATASETS,
        "methods": methods,
        "shots": shots,
        "seeds": seeds,
    }


def suite(grid, tmp_path, *extra):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return subprocess.run([sys.executable, SUITE, str(path), *extra], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow  # runs the stage's CLI per cell
def test_fewshot_grid_tables_resume_and_failures(tmp_path):
    methods = {
        "zero_shot": {"do_train": False},
        "full": {"finetuning_type": "full", "learning_rate": 3e-4},
        "broken": {"finetuning_type": "lora", "lora_rank": 0},
    }
    grid = make_grid(tmp_path, "fewshot", methods, [1, 2], [1, 2])
    plan = suite(grid, tmp_path, "--dry-run")
    assert plan.returncode == 0 and "9 cells (0 finished, 9 to run)" in plan.stdout

    done = suite(grid, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # the broken cells failed, the others ran
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "results.csv").open()))
    full = [r for r in rows if r["method"] == "full" and r["metric"] == "accuracy"]
    assert len(full) == 4 and all(r["status"] == "done" for r in full)
    assert {r["status"] for r in rows if r["method"] == "broken"} == {"failed"}
    table = (out / "table.md").read_text()
    values = [float(r["value"]) * 100 for r in full if r["shots"] == "2"]
    mean = sum(values) / 2
    assert f"| full | 2 | {mean:.1f} ± " in table
    assert "lora_rank must be at least 1" in table  # the failed cells, with their error
    assert (out / "accuracy_vs_shots.png").stat().st_size > 1000

    # a suite killed while a cell was running: that cell has no record; only it runs again
    cell = out / "cells" / "full" / "fashion_mnist" / "2shot" / "seed2" / "cell.json"
    first = json.loads(cell.read_text())
    cell.unlink()
    again = suite(grid, tmp_path)
    assert "9 cells (4 finished, 5 to run)" in again.stdout  # the four broken cells are retried, too
    assert "full / fashion_mnist / 2 shots / seed 2" in again.stdout
    assert "zero_shot / fashion_mnist" not in again.stdout and "full / fashion_mnist / 1 shots" not in again.stdout
    assert json.loads(cell.read_text())["metrics"] == first["metrics"]  # the same seed gives the same result


@pytest.mark.slow
def test_base_to_new_reports_base_new_and_harmonic_mean(tmp_path):
    methods = {"zero_shot": {"do_train": False}, "full": {"learning_rate": 3e-4}}
    grid = make_grid(tmp_path, "base_to_new", methods, [2], [1])
    done = suite(grid, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "out/cells/full/fashion_mnist/2shot/seed1/cell.json").read_text())["metrics"]
    base, new = record["base"], record["new"]
    assert record["hm"] == 2 * base * new / (base + new)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "### base" in table and "### new" in table and "### hm" in table


@pytest.mark.slow
def test_domain_shift_reports_the_source_and_every_target(tmp_path):
    methods = {"zero_shot": {"do_train": False}, "full": {"learning_rate": 3e-4}}
    grid = make_grid(tmp_path, "domain_shift", methods, [2], [1])
    grid["datasets"] = {"fashion_mnist": {**DATASETS["fashion_mnist"], "targets": ["fashion_mnist_val"]}}
    done = suite(grid, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2/2" in done.stdout  # the progress bar over the cells
    folder = tmp_path / "out/cells/full/fashion_mnist/2shot/seed1"
    record = json.loads((folder / "cell.json").read_text())["metrics"]
    target = json.loads((folder / "target_fashion_mnist_val" / "all_results.json").read_text())
    assert record["fashion_mnist_val"] == target["eval_accuracy"] == record["target_average"]
    assert "source" in record and "targets" not in json.loads((folder / "cell.json").read_text())["args"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "### source" in table and "### fashion_mnist_val" in table and "### target_average" in table
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert "peak_gpu_gib" in rows[0]  # empty on CPU
