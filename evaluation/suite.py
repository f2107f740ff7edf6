"""The field's standard tables from one grid: every cell a run of the stage itself (``llamafactory-cli train``).

    python evaluation/suite.py evaluation/grids/tiny.yaml            # run (resumable: finished cells are skipped)
    python evaluation/suite.py evaluation/grids/coop_vit_b16.yaml --dry-run   # print the plan only

A grid yaml names ``protocol`` (``fewshot``, ``base_to_new``, ``domain_shift`` or ``retrieval``), ``model``,
``output_dir``, ``base`` (stage keys of every cell), ``datasets`` (name -> stage keys: dataset / val_dataset /
eval_dataset, or ``coop_root`` for CoOp's data folder; ``domain_shift`` adds ``targets``, the shifted test sets each
trained model is also evaluated on), ``methods`` (name -> stage keys), ``shots`` and ``seeds``. Each cell runs in its
own output folder with its arguments in ``cell.yaml``; ``cell.json`` records the outcome, so a killed suite resumes
where it stopped, and a failed cell is reported and skipped. Results: ``results.csv`` (every cell and metric, wall
time, trainable parameters, peak GPU memory), ``table.md`` (mean ± std over seeds, with published reference numbers
beside the measured ones when the grid is the CoOp protocol on ViT-B/16) and ``accuracy_vs_shots.png``.
"""

import argparse
import csv
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from llamafactory.clip_finetune.hparams import ClipFinetuningArguments


CLI = str(Path(sys.executable).with_name("llamafactory-cli"))
MAIN_METRIC = {"fewshot": "accuracy", "base_to_new": "accuracy", "domain_shift": "accuracy", "retrieval": "i2t_r1"}
# CoOp's data folder: dataset -> (split file under coop_root, image folder under coop_root); ImageNet and
# FGVCAircraft ship no split_zhou file in CoOp's layout, so they need dataset_info entries of their own
COOP_DATASETS = {
    "Caltech101": ("caltech-101/split_zhou_Caltech101.json", "caltech-101/101_ObjectCategories"),
    "OxfordPets": ("oxford_pets/split_zhou_OxfordPets.json", "oxford_pets/images"),
    "StanfordCars": ("stanford_cars/split_zhou_StanfordCars.json", "stanford_cars"),
    "OxfordFlowers": ("oxford_flowers/split_zhou_OxfordFlowers.json", "oxford_flowers/jpg"),
    "Food101": ("food-101/split_zhou_Food101.json", "food-101/images"),
    "FGVCAircraft": (None, None),
    "SUN397": ("sun397/split_zhou_SUN397.json", "sun397/SUN397"),
    "DescribableTextures": ("dtd/split_zhou_DescribableTextures.json", "dtd/images"),
    "EuroSAT": ("eurosat/split_zhou_EuroSAT.json", "eurosat/2750"),
    "UCF101": ("ucf101/split_zhou_UCF101.json", "ucf101/UCF-101-midframes"),
    "ImageNet": (None, None),
}
# Published few-shot accuracy (%), ViT-B/16, average over the 11 CoOp datasets, 3 seeds, at 1/2/4/8/16 shots: the
# CLIP-LoRA paper's Table 1 (Zanella and Ben Ayed, CVPRW 2024) as collected in HealthX-Lab/CLIP-SVD's README; keyed by
# the method names of evaluation/grids/coop_vit_b16.yaml.
SHOTS = (1, 2, 4, 8, 16)
PUBLISHED = {("zero_shot", 0): 65.4} | {
    (method, k): value
    for method, values in {
        "coop": (68.1, 70.1, 73.6, 76.5, 79.0),
        "kgcoop": (69.5, 71.6, 74.5, 75.8, 77.3),
        "maple": (69.3, 72.6, 75.4, 78.9, 81.8),
        "linear_probe": (45.8, 56.9, 66.8, 73.4, 78.4),
        "lp_pp": (70.4, 72.9, 75.8, 77.9, 80.3),
        "adapter": (67.9, 70.2, 72.7, 76.9, 79.9),
        "tip": (68.9, 70.4, 72.7, 74.4, 76.4),
        "tip_f": (70.6, 73.1, 75.8, 78.5, 81.2),
        "clip_lora": (72.2, 75.4, 77.3, 80.1, 82.9),
    }.items()
    for k, value in zip(SHOTS, values, strict=True)
}


def coop_entries(root: str) -> dict[str, dict]:
    """dataset_info.json entries (train/val/test) for the CoOp datasets found under ``root``."""
    entries = {}
    for name, (split, images) in COOP_DATASETS.items():
        if split is None:
            continue
        for part in ("train", "val", "test"):
            entries[f"{name}_{part}"] = {
                "file_name": os.path.join(root, split),
                "split": part,
                "image_dir": os.path.join(root, images),
                "templates": name,
            }
    return entries


def load_grid(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        grid = yaml.safe_load(f)
    for key in ("protocol", "model", "output_dir", "datasets", "methods"):
        if key not in grid:
            raise SystemExit(f"{path}: the grid needs `{key}`.")
    if grid["protocol"] not in MAIN_METRIC:
        raise SystemExit(f"{path}: protocol `{grid['protocol']}` is not one of {sorted(MAIN_METRIC)}.")
    if grid.get("coop_root"):
        names = grid["datasets"] if isinstance(grid["datasets"], list) else list(grid["datasets"])
        unknown = [n for n in names if n not in COOP_DATASETS]
        if unknown:
            raise SystemExit(f"{path}: {unknown} are not CoOp datasets ({', '.join(COOP_DATASETS)}).")
        grid["datasets"] = {
            n: {"dataset": f"{n}_train", "val_dataset": f"{n}_val", "eval_dataset": f"{n}_test"} for n in names
        }
    return grid


def cells(grid: dict) -> list[dict]:
    """Every (method, dataset, shots, seed) of the grid, with its stage arguments. Zero-shot methods
    (``do_train: false``) run once per dataset."""
    protocol = grid["protocol"]
    shots = [None] if protocol == "retrieval" else grid.get("shots", [16])
    seeds = grid.get("seeds", [1])
    out = []
    for method, keys in grid["methods"].items():
        keys = dict(keys or {})
        trains = keys.get("do_train", True)
        for dataset, data_keys in grid["datasets"].items():
            for k in shots if trains else [None]:
                for seed in seeds if trains else [seeds[0]]:
                    folder = os.path.join(grid["output_dir"], "cells", method, dataset, f"{k or 0}shot", f"seed{seed}")
                    args = {"stage": "clip", "model_name_or_path": grid["model"], **(grid.get("base") or {})}
                    args.update({k: v for k, v in (data_keys or {}).items() if k != "targets"})
                    args.update(keys)
                    args.update(seed=seed, output_dir=folder, overwrite_output_dir=True, do_eval=True)
                    args.setdefault("do_train", True)
                    if k is not None and args["do_train"]:
                        args["num_shots"] = k
                    if protocol == "base_to_new":
                        args["subsample_classes"] = "base"
                    if grid.get("coop_root"):
                        args["dataset_dir"] = os.path.join(grid["output_dir"], "data")
                    if not args["do_train"]:
                        args.pop("dataset", None)
                    cell = {"method": method, "dataset": dataset, "shots": k or 0, "seed": seed, "args": args}
                    if protocol == "domain_shift":
                        cell["targets"] = list((data_keys or {}).get("targets") or [])
                    out.append(cell)
    return out


def finished(cell: dict) -> bool:
    path = os.path.join(cell["args"]["output_dir"], "cell.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    return record.get("args") == cell["args"] and record.get("status") == "done"


def _trainable(log: str) -> int | None:
    found = re.findall(r"trainable params: ([\d,]+)", log)
    return int(found[-1].replace(",", "")) if found else None


def stage_run(args: dict, config: str) -> tuple[str, dict | None, float | None]:
    """``llamafactory-cli train`` on ``args`` (written to ``config``): its output, its eval_* metrics without the
    prefix (None when it failed), and the peak GPU memory it reported (GiB; None on CPU)."""
    with open(config, "w", encoding="utf-8") as f:
        yaml.safe_dump(args, f)
    done = subprocess.run([CLI, "train", config], capture_output=True, text=True)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        return log, None, None
    with open(os.path.join(args["output_dir"], "all_results.json"), encoding="utf-8") as f:
        results = json.load(f)
    metrics = {k[len("eval_") :]: v for k, v in results.items() if k.startswith("eval_")}
    return log, metrics, results.get("train_peak_gpu_memory_gib")


def evaluate_on(cell: dict, folder: str, name: str, key: str, extra: dict) -> tuple[str, dict | None]:
    """The cell's trained model (or the base model, for a zero-shot cell) evaluated on ``name`` without training."""
    # the saved run carries its method (a checkpoint, an adapter, a head): the method's keys, some of which only
    # training reads (wise_ft_alphas, lp_ft, a probe's search), stay out of an evaluation
    method_keys = {f.name for f in dataclasses.fields(ClipFinetuningArguments)} - {"stage", "clip_task"}
    args = {k: v for k, v in cell["args"].items() if k not in method_keys | {"dataset", "num_shots", "val_dataset"}}
    args.update(eval_dataset=name, do_train=False, output_dir=os.path.join(folder, key), **extra)
    if cell["args"]["do_train"]:
        args["model_name_or_path"] = folder
    log, metrics, _ = stage_run(args, os.path.join(folder, f"{key}.yaml"))
    return log, metrics


def last_line(log: str) -> str:
    return log.strip().splitlines()[-1] if log.strip() else "?"


def run_cell(cell: dict, protocol: str) -> dict:
    """One cell through ``llamafactory-cli train``; base-to-new adds an evaluation of the new classes, domain shift
    one per target test set."""
    folder = cell["args"]["output_dir"]
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    log, metrics, peak = stage_run(cell["args"], os.path.join(folder, "cell.yaml"))
    record = {"args": cell["args"], "trainable": _trainable(log), "peak_gpu_gib": peak}
    if metrics is None:
        return {**record, "wall_s": round(time.perf_counter() - start, 1), "status": "failed", "error": last_line(log)}
    if protocol == "base_to_new":
        log, new = evaluate_on(cell, folder, cell["args"]["eval_dataset"], "new", {"subsample_classes": "new"})
        if new is None:
            return {**record, "status": "failed", "error": "new classes: " + last_line(log)}
        base, new = metrics["accuracy"], new["accuracy"]
        metrics = {"base": base, "new": new, "hm": 2 * base * new / (base + new) if base + new else 0.0}
    if protocol == "domain_shift":
        shifted = {"source": metrics["accuracy"]}
        for target in cell["targets"]:
            log, found = evaluate_on(cell, folder, target, f"target_{target}", {})
            if found is None:
                return {**record, "status": "failed", "error": f"target {target}: " + last_line(log)}
            shifted[target] = found["accuracy"]
        if cell["targets"]:
            shifted["target_average"] = statistics.mean(shifted[t] for t in cell["targets"])
        metrics = shifted
    return {**record, "wall_s": round(time.perf_counter() - start, 1), "status": "done", "metrics": metrics}


def summarize(grid: dict, records: list[dict]) -> str:
    """A markdown table of mean ± std over seeds (in %), per method and shots, one column per dataset and the
    average; base-to-new reports base, new and HM."""
    protocol = grid["protocol"]
    keys = ["base", "new", "hm"] if protocol == "base_to_new" else [MAIN_METRIC[protocol]]
    if protocol == "domain_shift":  # source, each target test set, and the targets' average
        targets = [t for data in grid["datasets"].values() for t in (data or {}).get("targets") or []]
        keys = ["source", *dict.fromkeys(targets)] + (["target_average"] if targets else [])
    datasets = list(grid["datasets"])
    lines = []
    for key in keys:
        lines += [f"### {key}", "", "| method | shots | " + " | ".join(datasets) + " | average |"]
        lines.append("| --- | --- | " + " | ".join("---" for _ in datasets) + " | --- |")
        groups = sorted(
            {(r["method"], r["shots"]) for r in records}, key=lambda g: (list(grid["methods"]).index(g[0]), g[1])
        )
        for method, shots in groups:
            cells_, means = [], []
            for dataset in datasets:
                values = [
                    100 * r["metrics"][key]
                    for r in records
                    if (r["method"], r["shots"], r["dataset"]) == (method, shots, dataset)
                    and r["status"] == "done"
                    and key in r["metrics"]
                ]
                if values:
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    cells_.append(f"{statistics.mean(values):.1f} ± {std:.1f}")
                    means.append(statistics.mean(values))
                else:
                    cells_.append("—")
            average = f"{statistics.mean(means):.1f}" if len(means) == len(datasets) else "—"
            published = PUBLISHED.get((method, shots)) if is_coop_protocol(grid) else None
            if published is not None:
                average += f" (published {published})"
            lines.append(f"| {method} | {shots} | " + " | ".join(cells_) + f" | {average} |")
        lines.append("")
    failed = [r for r in records if r["status"] != "done"]
    if failed:
        lines += ["### failed cells", ""] + [
            f"- {r['method']} / {r['dataset']} / {r['shots']} shots / seed {r['seed']}: {r.get('error')}"
            for r in failed
        ]
    return "\n".join(lines) + "\n"


def is_coop_protocol(grid: dict) -> bool:
    """The published numbers compare only with the CoOp few-shot protocol on ViT-B/16 over all 11 datasets."""
    vit_b16 = grid["model"] in ("openai/clip-vit-base-patch16", "ViT-B/16")
    return grid["protocol"] == "fewshot" and vit_b16 and set(grid["datasets"]) == set(COOP_DATASETS)


def write_outputs(grid: dict, records: list[dict]) -> None:
    out = grid["output_dir"]
    main = MAIN_METRIC[grid["protocol"]]
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "dataset", "shots", "seed", "metric", "value", "wall_s", "trainable", "peak_gpu_gib", "status"]
        )
        for r in records:
            for metric, value in (r.get("metrics") or {"": ""}).items():
                row = [r["method"], r["dataset"], r["shots"], r["seed"], metric, value, r.get("wall_s")]
                writer.writerow(row + [r.get("trainable"), r.get("peak_gpu_gib"), r["status"]])
    with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
        f.write(summarize(grid, records))
    if grid["protocol"] == "fewshot":
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in grid["methods"]:
            points = {}
            for r in records:
                if r["method"] == method and r["status"] == "done":
                    points.setdefault(r["shots"], []).append(100 * r["metrics"][main])
            if points:
                xs = sorted(points)
                ax.plot(xs, [statistics.mean(points[x]) for x in xs], marker="o", label=method)
        ax.set_xlabel("shots per class")
        ax.set_ylabel(f"{main} (%), mean over seeds and datasets")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "accuracy_vs_shots.png"), dpi=120)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    opts = parser.parse_args(argv)
    grid = load_grid(opts.grid)
    plan = cells(grid)
    todo = [c for c in plan if not finished(c)]
    print(f"{len(plan)} cells ({len(plan) - len(todo)} finished, {len(todo)} to run), protocol {grid['protocol']}.")
    if opts.dry_run:
        for c in plan:
            mark = "done" if c not in todo else "todo"
            print(f"  [{mark}] {c['method']:>12} {c['dataset']:>20} {c['shots']:>3} shots  seed {c['seed']}")
        if grid.get("coop_root"):
            missing = [n for n, (split, _) in COOP_DATASETS.items() if split is None and n in grid["datasets"]]
            if missing:
                print(f"  note: {missing} need dataset_info.json entries of their own (no split_zhou file).")
        return 0
    os.makedirs(grid["output_dir"], exist_ok=True)
    if grid.get("coop_root"):
        os.makedirs(os.path.join(grid["output_dir"], "data"), exist_ok=True)
        with open(os.path.join(grid["output_dir"], "data", "dataset_info.json"), "w", encoding="utf-8") as f:
            json.dump(coop_entries(grid["coop_root"]), f, indent=2)
    records = []
    bar = tqdm(total=len(todo), unit="cell", desc="suite", file=sys.stdout, disable=not todo)
    for cell in plan:
        path = os.path.join(cell["args"]["output_dir"], "cell.json")
        if cell in todo:
            bar.set_postfix_str(f"{cell['method']} / {cell['dataset']} / {cell['shots']} shots / seed {cell['seed']}")
            record = run_cell(cell, grid["protocol"])
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
            os.replace(path + ".tmp", path)  # a cell is finished only once its record is whole
            if record["status"] != "done":
                bar.write(f"failed: {cell['method']} / {cell['dataset']} / seed {cell['seed']}: {record['error']}")
            bar.update()
        with open(path, encoding="utf-8") as f:
            records.append({**json.load(f), **{k: cell[k] for k in ("method", "dataset", "shots", "seed")}})
    bar.close()
    write_outputs(grid, records)
    failed = sum(r["status"] != "done" for r in records)
    print(f"{len(records) - failed} cells done, {failed} failed; {grid['output_dir']}/table.md, results.csv.")
    print(open(os.path.join(grid["output_dir"], "table.md"), encoding="utf-8").read())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
