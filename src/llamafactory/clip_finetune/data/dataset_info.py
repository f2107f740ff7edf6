"""Read dataset entries from ``dataset_dir/dataset_info.json`` (LLaMA-Factory's registry file)."""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal


FORMATTINGS = ("imagefolder", "table", "coop", "karpathy", "hf")
TASKS = ("classification", "image_to_text")  # the sample kinds the readers produce; tasks.TASKS checks against it
ENTRY_KEYS = {
    "task",
    "file_name",
    "hf_hub_url",
    "formatting",
    "split",
    "image_dir",
    "columns",
    "classnames",
    "templates",
    "class_map",
}
DEFAULT_COLUMNS = {"image": "image", "label": "label", "captions": "captions"}


@dataclass
class DatasetAttr:
    name: str
    task: Literal["classification", "image_to_text"]
    formatting: str
    path: str | None = None  # file or folder, already joined with dataset_dir
    hf_hub_url: str | None = None
    split: str = "train"
    image_dir: str | None = None
    columns: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    classnames: list[str] | None = None
    templates: Any = None
    # folder key -> class name, in the label order of the full class set (CoOp's ImageNet classnames.txt: wnid and
    # name per line); class folders named by key (ImageNet-Sketch/-A/-R) or by position (ImageNet-V2's 0..999)
    class_map: list[tuple[str, str]] | None = None

    @property
    def where(self) -> str:
        return f"dataset `{self.name}`"


def _infer_formatting(path: str) -> str:
    base = os.path.basename(path)
    if os.path.isdir(path):
        saved = any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json"))
        return "hf" if saved else "imagefolder"  # datasets.save_to_disk writes one of those files
    if base.startswith("split_zhou_") and base.endswith(".json"):
        return "coop"
    if base.endswith((".csv", ".tsv", ".jsonl", ".json")):
        return "table"
    raise ValueError(f"Cannot tell the format of `{path}`: set `formatting` to one of {FORMATTINGS}.")


def _read_classnames(value: Any, dataset_dir: str, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        where, names = "its `classnames` list", value
    else:
        path = os.path.join(dataset_dir, value)
        if not os.path.isfile(path):
            raise ValueError(f"dataset `{name}`: classnames file `{path}` does not exist.")
        with open(path, encoding="utf-8") as f:
            where, names = f"classnames file `{path}`", [line.strip() for line in f if line.strip()]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"dataset `{name}`: {where} must hold non-empty class names, got {names!r}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"dataset `{name}`: {where} lists {repeated} more than once; each class once, in label order."
        )
    return list(names)


def _read_class_map(value: Any, dataset_dir: str, name: str, formatting: str) -> list[tuple[str, str]] | None:
    """A text file of ``<folder key> <class name>`` lines (CoOp's ImageNet ``classnames.txt``)."""
    if value is None:
        return None
    if formatting != "imagefolder":
        raise ValueError(f"dataset `{name}`: class_map names class folders; it applies to imagefolder datasets.")
    path = os.path.join(dataset_dir, value) if isinstance(value, str) else None
    if path is None or not os.path.isfile(path):
        raise ValueError(f"dataset `{name}`: class_map `{value}` is not a file under {dataset_dir}.")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, _, classname = line.strip().partition(" ")
            if not classname.strip():
                raise ValueError(
                    f"dataset `{name}`: class_map `{path}` line {number} has no class name after `{key}`."
                )
            pairs.append((key, classname.strip()))
    keys = [key for key, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if not pairs or repeated:
        raise ValueError(f"dataset `{name}`: class_map `{path}` is empty or repeats keys {repeated[:5]}.")
    return pairs


def read_dataset_info(dataset_dir: str) -> dict[str, dict[str, Any]]:
    info_path = os.path.join(dataset_dir, "dataset_info.json")
    try:
        with open(info_path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise ValueError(f"dataset_dir: `{info_path}` does not exist.") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"`{info_path}` is not valid JSON: {err}.") from err


def get_dataset_attr(name: str, dataset_dir: str, info: dict[str, dict[str, Any]]) -> DatasetAttr:
    if name not in info:
        raise ValueError(
            f"dataset `{name}` is not in {os.path.join(dataset_dir, 'dataset_info.json')} "
            f"(it has: {', '.join(sorted(info)) or 'nothing'})."
        )
    entry = info[name]
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ValueError(f"dataset `{name}`: unknown key(s) {sorted(unknown)}; valid keys are {sorted(ENTRY_KEYS)}.")
    task = entry.get("task", "classification")
    if task not in TASKS:
        raise ValueError(f"dataset `{name}`: task must be one of {TASKS}, got `{task}`.")
    if ("file_name" in entry) == ("hf_hub_url" in entry):
        raise ValueError(f"dataset `{name}`: give exactly one of `file_name` or `hf_hub_url`.")

    path = os.path.join(dataset_dir, entry["file_name"]) if "file_name" in entry else None
    if path is not None and not os.path.exists(path):
        raise ValueError(f"dataset `{name}`: `{path}` does not exist.")
    formatting = entry.get("formatting") or ("hf" if path is None else _infer_formatting(path))
    if formatting not in FORMATTINGS:
        raise ValueError(f"dataset `{name}`: formatting must be one of {FORMATTINGS}, got `{formatting}`.")
    image_dir = entry.get("image_dir")
    return DatasetAttr(
        name=name,
        task=task,
        formatting=formatting,
        path=path,
        hf_hub_url=entry.get("hf_hub_url"),
        split=entry.get("split", "train"),
        image_dir=os.path.join(dataset_dir, image_dir) if image_dir else None,
        columns={**DEFAULT_COLUMNS, **entry.get("columns", {})},
        classnames=_read_classnames(entry.get("classnames"), dataset_dir, name),
        templates=entry.get("templates"),
        class_map=_read_class_map(entry.get("class_map"), dataset_dir, name, formatting),
    )


def get_dataset_attrs(names: list[str], dataset_dir: str, task: str) -> list[DatasetAttr]:
    info = read_dataset_info(dataset_dir)
    attrs = [get_dataset_attr(name, dataset_dir, info) for name in names]
    for attr in attrs:
        if attr.task != task:
            raise ValueError(f"{attr.where} is a {attr.task} dataset, but clip_task is {task}.")
    return attrs
