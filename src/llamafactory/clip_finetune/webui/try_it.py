"""The CLIP tab's "Try it": a finished run, loaded once and kept, scores uploaded images (classification: the top
classes; image_to_text: image-caption similarities). The run is served as the API serves it (``api.ClipPredictor``:
the run's own image size, templates, class names, PEFT adapter or Tip-Adapter cache)."""

import base64
import os
from typing import Any

import yaml

from ..api.predictor import MAX_IMAGE_BYTES, BadRequest, ClipPredictor
from ..hparams import ClipDataArguments, ClipModelArguments
from .locales import alert


RUN_ARGS = "training_args.yaml"  # what the tab (and LLaMA Board) writes into a run's output dir
RESULTS = "all_results.json"  # a finished run's
TOP_K = 5
_loaded: dict[str, tuple[ClipPredictor, str]] = {}  # run dir -> (predictor, task); the last run tried stays loaded


def finished_runs(root: str = "saves", depth: int = 4) -> list[str]:
    """Output dirs under ``root`` (LLaMA Board's saves folder, where the tab's runs go) holding a finished run."""
    runs = []
    for folder, subfolders, files in os.walk(root):
        if folder.count(os.sep) - root.count(os.sep) >= depth:
            subfolders.clear()
        if RESULTS in files and not os.path.basename(folder).startswith("checkpoint-"):
            runs.append(folder)
    return sorted(runs)


def load_run(run_dir: str, lang: str) -> tuple[ClipPredictor, str]:
    """The run's predictor and task, built once per run dir; its data keys come from the run's arguments file."""
    run_dir = os.path.normpath(run_dir or "")
    if run_dir in _loaded:
        return _loaded[run_dir]
    if not os.path.isfile(os.path.join(run_dir, RESULTS)):
        raise BadRequest(alert("try_no_run", lang, run_dir))
    saved: dict[str, Any] = {}
    if os.path.isfile(os.path.join(run_dir, RUN_ARGS)):
        with open(os.path.join(run_dir, RUN_ARGS), encoding="utf-8") as f:
            saved = yaml.safe_load(f) or {}
    task = saved.get("clip_task", "classification")
    data = {
        key: saved[key]
        for key in ("dataset_dir", "templates", "image_size", "image_mean", "image_std")
        if saved.get(key)
    }
    if task == "classification" and saved.get("dataset"):
        data["dataset"] = saved["dataset"] if isinstance(saved["dataset"], str) else ",".join(saved["dataset"])
    model = ClipModelArguments(
        model_name_or_path=run_dir, interpolate_pos_encoding=bool(saved.get("interpolate_pos_encoding", False))
    )
    try:
        predictor = ClipPredictor(model, ClipDataArguments(**data))
    except (ValueError, OSError) as err:
        raise BadRequest(alert("try_bad_run", lang, run_dir, err)) from None
    _loaded.clear()  # one model in memory at a time
    _loaded[run_dir] = (predictor, task)
    return predictor, task


def encode_uploads(paths: list[str], lang: str) -> tuple[list[str], list[str]]:
    """Uploaded files -> (base64 strings, names); a file over the size limit is refused before it is read."""
    if not paths:
        raise BadRequest(alert("try_no_images", lang))
    images, names = [], []
    for path in paths:
        name = os.path.basename(path)
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            raise BadRequest(alert("try_too_large", lang, name, MAX_IMAGE_BYTES // 2**20))
        with open(path, "rb") as f:
            images.append(base64.b64encode(f.read()).decode())
        names.append(name)
    return images, names


def try_run(run_dir: str, paths: list[str], captions: str, lang: str) -> tuple[dict[str, float] | None, str]:
    """(the first image's top classes as {class: score} for a bar display, a markdown table of every image), or
    (None, the message) when something is wrong; image_to_text runs score the typed captions instead."""
    try:
        predictor, task = load_run(run_dir, lang)
        images, names = encode_uploads(paths, lang)
        if task == "classification":
            results = predictor.classify(images, None, TOP_K)
            rows = [
                f"| {name} | " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in top) + " |"
                for name, top in zip(names, results, strict=True)
            ]
            table = "| image | top classes |\n| --- | --- |\n" + "\n".join(rows)
            return {t["label"]: t["score"] for t in results[0]}, table
        texts = [line.strip() for line in (captions or "").splitlines() if line.strip()]
        if not texts:
            raise BadRequest(alert("try_no_captions", lang))
        sims = (predictor.image_features(images) @ predictor.text_features(texts).t()).tolist()
        head = "| image | " + " | ".join(texts) + " |\n| --- |" + " --- |" * len(texts)
        rows = [
            f"| {name} | " + " | ".join(f"{s:.3f}" for s in row) + " |" for name, row in zip(names, sims, strict=True)
        ]
        return None, head + "\n" + "\n".join(rows)
    except BadRequest as err:
        return None, str(err)
