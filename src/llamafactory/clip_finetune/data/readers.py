"""Read each supported dataset format into plain lists of image references, labels and captions.

An image reference is a file path, or a dict with ``bytes`` (Hugging Face ``Image(decode=False)``). Each sample
keeps its origin (file and row) so that a bad row is named in the error.
"""

import csv
import errno
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from llamafactory.extras import logging

from .dataset_info import DatasetAttr


logger = logging.get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ClassificationSamples:
    images: list[Any]
    labels: list[int]
    classnames: list[str]
    origins: list[str]


@dataclass
class CaptionSamples:
    images: list[Any]
    captions: list[list[str]]
    origins: list[str]


def _check_file(path: str, origin: str, attr: DatasetAttr) -> str:
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        why = "is a folder, not an image file"
    elif os.path.islink(path):
        try:
            os.stat(path)
            why = "is not a regular file"
        except OSError as err:
            why = "is a symbolic link loop" if err.errno == errno.ELOOP else "is a broken symbolic link"
    else:
        why = "does not exist"
    raise ValueError(f"{attr.where}, {origin}: image file `{path}` {why}.")


def _classname(folder: str) -> str:
    return folder.replace("_", " ")


def _folder_classnames(folders: list[str], attr: DatasetAttr) -> list[str]:
    """Folder names with `_` read as spaces; two folders that give one class name are an error, not a merge."""
    seen: dict[str, str] = {}
    for folder in folders:
        name = _classname(folder)
        if name in seen:
            raise ValueError(
                f"{attr.where}: class folders `{seen[name]}` and `{folder}` in {attr.path} both give the class name "
                f"`{name}`. Merge or rename them, or give `classnames` in dataset_info.json."
            )
        seen[name] = folder
    return list(seen)


def _mapped_folders(folders: list[str], attr: DatasetAttr) -> tuple[list[str], list[str]]:
    """With a ``class_map``: the folders in the map's label order and their class names. A folder is a key of the
    map (a WordNet id) or a position in it (ImageNet-V2's folders 0..999); a subset of the classes (ImageNet-A/-R's
    200) keeps the map's order."""
    index = {key: i for i, (key, _) in enumerate(attr.class_map)}

    def position(folder: str) -> int:
        if folder in index:
            return index[folder]
        if folder.isdigit() and int(folder) < len(index):
            return int(folder)
        raise ValueError(
            f"{attr.where}: class folder `{folder}` in {attr.path} is neither a key of its class_map nor a class "
            f"position below {len(index)}."
        )

    ordered = sorted(folders, key=position)
    positions = [position(folder) for folder in ordered]
    if len(set(positions)) != len(positions):
        raise ValueError(f"{attr.where}: two class folders in {attr.path} name the same class of its class_map.")
    return ordered, [attr.class_map[p][1] for p in positions]


def read_imagefolder(attr: DatasetAttr) -> ClassificationSamples:
    folders = sorted(entry.name for entry in os.scandir(attr.path) if entry.is_dir())
    if not folders:
        raise ValueError(f"{attr.where}: `{attr.path}` has no class folders (expected one folder per class).")
    mapped = None
    if attr.class_map is not None:
        folders, mapped = _mapped_folders(folders, attr)
    classnames = attr.classnames or mapped or _folder_classnames(folders, attr)
    if len(classnames) != len(folders):
        raise ValueError(
            f"{attr.where}: {len(classnames)} classnames for {len(folders)} class folders in {attr.path}."
        )
    images, labels, skipped = [], [], 0
    for label, folder in enumerate(folders):
        names = sorted(os.listdir(os.path.join(attr.path, folder)))
        files = [name for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
        skipped += len(names) - len(files)
        if not files:
            raise ValueError(f"{attr.where}: class folder `{os.path.join(attr.path, folder)}` holds no images.")
        images += [os.path.join(attr.path, folder, name) for name in files]
        labels += [label] * len(files)
    if skipped:
        logger.warning_rank0(f"{attr.where}: skipped {skipped} files without an image extension {IMAGE_EXTENSIONS}.")
    return ClassificationSamples(images, labels, classnames, list(images))


def _json_row(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=lambda name: float(name))  # NaN/Infinity read, then refused per row
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno}).") from None


def _read_rows(path: str) -> tuple[list[Any], list[str]]:
    """The rows of a table file and where each one is (`file line N`, or `file row N` in a JSON list)."""
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith((".csv", ".tsv")):
                reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ",")
                rows, origins = [], []
                for row in reader:
                    rows.append(row)
                    origins.append(f"{path} line {reader.line_num}")
            elif path.endswith(".jsonl"):
                numbered = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
                rows = [_json_row(line, f"{path} line {n}") for n, line in numbered]
                origins = [f"{path} line {n}" for n, _ in numbered]
            else:
                rows = _json_row(f.read(), path)
                if not isinstance(rows, list):
                    raise ValueError(f"`{path}` must hold a JSON list of rows, not a {type(rows).__name__}.")
                origins = [f"{path} row {i + 1}" for i in range(len(rows))]
    except UnicodeDecodeError as err:
        raise ValueError(f"`{path}` is not a UTF-8 text table ({err.reason} at byte {err.start}).") from None
    except csv.Error as err:
        raise ValueError(f"`{path}`: not a valid CSV/TSV file ({err}).") from None
    if not rows:
        raise ValueError(f"`{path}` holds no rows.")
    for row, origin in zip(rows, origins, strict=True):
        if not isinstance(row, dict):
            raise ValueError(f"{origin}: a row must be an object with named columns, got {row!r}.")
    return rows, origins


def _column(row: dict[str, Any], column: str, origin: str, attr: DatasetAttr) -> Any:
    if column not in row or row[column] in (None, ""):
        raise ValueError(f"{attr.where}, {origin}: column `{column}` is missing (row has {sorted(row)}).")
    return row[column]


MISSING = {"nan", "na", "n/a", "null", "none"}  # what spreadsheets and pandas write for an empty cell
INTEGER = re.compile(r"^-?\d+$")
NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _label_value(value: Any, classnames: list[str] | None, origin: str, attr: DatasetAttr) -> int | str:
    """A row's label as a class index (int) or a class name (str); missing values and fractions are errors."""
    if isinstance(value, str):
        text = value.strip()
        if classnames is not None and text in classnames:
            return text
        if text.lower() in MISSING:
            raise ValueError(
                f"{attr.where}, {origin}: label `{value}` is a missing value. Fix the row, or list `{text}` in "
                "`classnames` in dataset_info.json if it is a class."
            )
        if INTEGER.match(text):
            return int(text)
        if not NUMBER.match(text):
            return text
        value = float(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{attr.where}, {origin}: label {value!r} is neither a class name nor a class index.")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{attr.where}, {origin}: label is {value} (a missing value); fix the row.")
        if not value.is_integer():
            raise ValueError(f"{attr.where}, {origin}: label {value} is not a whole class index.")
    return int(value)


def _label_index(value: Any, classnames: list[str], origin: str, attr: DatasetAttr) -> int:
    label = _label_value(value, classnames, origin, attr)
    if isinstance(label, str):
        if label not in classnames:
            raise ValueError(f"{attr.where}, {origin}: label `{label}` is not one of the classes {classnames}.")
        return classnames.index(label)
    if not 0 <= label < len(classnames):
        raise ValueError(f"{attr.where}, {origin}: label {label} is outside the {len(classnames)} classes.")
    return label


def _string_classnames(values: list[Any], origins: list[str], attr: DatasetAttr) -> list[str]:
    labels = [_label_value(v, None, o, attr) for v, o in zip(values, origins, strict=True)]
    if all(isinstance(label, str) for label in labels):
        return sorted(set(labels))
    raise ValueError(f"{attr.where}: numeric labels need `classnames` (a list or a text file) in dataset_info.json.")


def read_table(attr: DatasetAttr) -> Any:
    rows, origins = _read_rows(attr.path)
    base = attr.image_dir or os.path.dirname(attr.path)
    paths = [
        _check_file(os.path.join(base, str(_column(row, attr.columns["image"], o, attr))), o, attr)
        for row, o in zip(rows, origins, strict=True)
    ]
    if attr.task == "classification":
        raw = [_column(row, attr.columns["label"], o, attr) for row, o in zip(rows, origins, strict=True)]
        classnames = attr.classnames or _string_classnames(raw, origins, attr)
        labels = [_label_index(value, classnames, o, attr) for value, o in zip(raw, origins, strict=True)]
        return ClassificationSamples(paths, labels, classnames, origins)
    return _group_captions(paths, [_captions(row, o, attr) for row, o in zip(rows, origins, strict=True)], origins)


def _captions(row: dict[str, Any], origin: str, attr: DatasetAttr) -> list[str]:
    value = _column(row, attr.columns["captions"], origin, attr)
    captions = [value] if isinstance(value, str) else list(value)
    if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
        raise ValueError(f"{attr.where}, {origin}: captions must be non-empty strings, got {value!r}.")
    return captions


def _group_captions(images: list[Any], captions: list[list[str]], origins: list[str]) -> CaptionSamples:
    """Rows that repeat an image (one caption per row, as in CSVs) become one image with several captions."""
    index: dict[str, int] = {}
    out = CaptionSamples([], [], [])
    for image, caps, origin in zip(images, captions, origins, strict=True):
        key = image if isinstance(image, str) else None
        if key is not None and key in index:
            out.captions[index[key]] += caps
            continue
        if key is not None:
            index[key] = len(out.images)
        out.images.append(image)
        out.captions.append(list(caps))
        out.origins.append(origin)
    return out


def read_coop(attr: DatasetAttr) -> ClassificationSamples:
    """CoOp's ``split_zhou_<Name>.json``: {"train"|"val"|"test": [[impath, label, classname], ...]}."""
    with open(attr.path, encoding="utf-8") as f:
        splits = json.load(f)
    if attr.split not in splits:
        raise ValueError(f"{attr.where}: split `{attr.split}` not in {attr.path} (it has {sorted(splits)}).")
    names: dict[int, str] = {}
    for rows in splits.values():  # the class list spans every split, so train and test agree
        for _, label, classname in rows:
            names[int(label)] = classname
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{attr.where}: labels in {attr.path} are not 0..N-1.")
    classnames = attr.classnames or [names[i] for i in range(len(names))]
    base = attr.image_dir or os.path.join(os.path.dirname(attr.path), "images")
    rows = splits[attr.split]
    origins = [f"{attr.path} {attr.split}[{i}]" for i in range(len(rows))]
    images = [_check_file(os.path.join(base, row[0]), o, attr) for row, o in zip(rows, origins, strict=True)]
    return ClassificationSamples(images, [int(row[1]) for row in rows], classnames, origins)


def read_karpathy(attr: DatasetAttr) -> CaptionSamples:
    """Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``); train also takes restval."""
    with open(attr.path, encoding="utf-8") as f:
        entries = json.load(f)["images"]
    wanted = {attr.split, "restval"} if attr.split == "train" else {attr.split}
    base = attr.image_dir or os.path.dirname(attr.path)
    chosen = [e for e in entries if e.get("split") in wanted]
    origins = [f"{attr.path} image `{e.get('filename')}`" for e in chosen]
    images = [
        _check_file(os.path.join(base, e.get("filepath", ""), e["filename"]), o, attr)
        for e, o in zip(chosen, origins, strict=True)
    ]
    captions = [[s["raw"] for s in e["sentences"]] for e in chosen]
    return CaptionSamples(images, captions, origins)


def read_hf(attr: DatasetAttr) -> Any:
    import datasets

    if attr.path is not None:
        data = datasets.load_from_disk(attr.path)
    else:
        data = datasets.load_dataset(attr.hf_hub_url, split=attr.split)
    if isinstance(data, datasets.DatasetDict):
        if attr.split not in data:
            raise ValueError(f"{attr.where}: split `{attr.split}` not found (it has {list(data)}).")
        data = data[attr.split]
    image_col = attr.columns["image"]
    if image_col not in data.column_names:
        raise ValueError(f"{attr.where}: no image column `{image_col}` (columns: {data.column_names}).")
    data = data.cast_column(image_col, datasets.Image(decode=False))
    images = data[image_col]
    origins = [f"{attr.where} row {i}" for i in range(len(data))]
    if attr.task == "image_to_text":
        captions = [
            _captions(row, o, attr)
            for row, o in zip(data.select_columns([attr.columns["captions"]]), origins, strict=True)
        ]
        return CaptionSamples(images, captions, origins)
    label_col = attr.columns["label"]
    if label_col not in data.column_names:
        raise ValueError(f"{attr.where}: no label column `{label_col}` (columns: {data.column_names}).")
    feature = data.features[label_col]
    raw = data[label_col]
    classnames = attr.classnames or getattr(feature, "names", None) or _string_classnames(raw, origins, attr)
    labels = [_label_index(value, classnames, o, attr) for value, o in zip(raw, origins, strict=True)]
    return ClassificationSamples(images, labels, classnames, origins)


READERS = {
    "imagefolder": read_imagefolder,
    "table": read_table,
    "coop": read_coop,
    "karpathy": read_karpathy,
    "hf": read_hf,
}


def read_samples(attr: DatasetAttr) -> Any:
    if attr.task == "image_to_text" and attr.formatting in ("imagefolder", "coop"):
        raise ValueError(f"{attr.where}: `{attr.formatting}` holds class labels, not captions.")
    if attr.task == "classification" and attr.formatting == "karpathy":
        raise ValueError(f"{attr.where}: karpathy files hold captions; use it with clip_task image_to_text.")
    return READERS[attr.formatting](attr)
