"""Turn ``dataset`` / ``eval_dataset`` / ``val_dataset`` names into torch datasets for one task."""

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from llamafactory.extras import logging

from ..hparams.data_args import split_names
from .dataset_info import DatasetAttr, get_dataset_attrs
from .datasets import CaptionDataset, ClassificationDataset
from .fewshot import sample_per_class, validation_shots
from .overlap import describe, shared_images
from .readers import CaptionSamples, ClassificationSamples, read_samples
from .templates import COOP_TEMPLATES, resolve_templates
from .transforms import ImageSpec


if TYPE_CHECKING:
    from ..hparams import ClipDataArguments


logger = logging.get_logger(__name__)


@dataclass
class ClipDatasets:
    train: Any | None
    eval: Any | None
    val: Any | None
    classnames: list[str] | None
    templates: list[str]
    spec: ImageSpec
    predict: Any | None = None

    def decode_on_device(self, on: bool) -> None:
        """Send JPEG files to the device as bytes (``image_decode_device``) in every split."""
        for part in (self.train, self.eval, self.val, self.predict):
            if part is not None:
                part.device_decode = on

    def tokenize_captions(self, tokenizer: Any) -> None:
        """Tokenize every caption set again (a learned text context leaves its slots in them too)."""
        for part in (self.train, self.eval, self.val, self.predict):
            if hasattr(part, "tokenize"):
                part.tokenize(tokenizer)


def _merge(attrs: list[DatasetAttr], max_samples: int | None, seed: int) -> Any:
    parts = [read_samples(attr) for attr in attrs]
    if max_samples is not None:  # a seeded random subset: files are often sorted by class
        for part in parts:
            count = len(part.images)
            keep = sorted(torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:max_samples].tolist())
            for key in vars(part):
                if key != "classnames":
                    values = getattr(part, key)
                    setattr(part, key, [values[i] for i in keep])
    first = parts[0]
    for attr, part in zip(attrs[1:], parts[1:], strict=True):
        if isinstance(part, ClassificationSamples) and part.classnames != first.classnames:
            raise ValueError(
                f"{attr.where} has classes {part.classnames}, but {attrs[0].where} has {first.classnames}: "
                "datasets combined in one run must share one class list."
            )
        for key in vars(part):
            if key != "classnames":
                getattr(first, key).extend(getattr(part, key))
    return first


def dataset_templates(data_args: "ClipDataArguments", attrs: list[DatasetAttr]) -> list[str]:
    if data_args.templates is not None:
        return list(data_args.templates)
    attr = attrs[0]
    if attr.templates is not None:
        return resolve_templates(attr.templates, attr.where)
    if attr.formatting == "coop":
        name = os.path.basename(attr.path)[len("split_zhou_") : -len(".json")]
        if name in COOP_TEMPLATES:
            return list(COOP_TEMPLATES[name])
    return resolve_templates(None, attr.where)


def subsample_classes(samples: ClassificationSamples, which: str) -> ClassificationSamples:
    """CoOp's base-to-new split: base = the first ceil(N/2) classes, new = the rest, relabeled from 0."""
    if which == "all":
        return samples
    half = math.ceil(len(samples.classnames) / 2)
    low, high = (0, half) if which == "base" else (half, len(samples.classnames))
    keep = [i for i, label in enumerate(samples.labels) if low <= label < high]
    return ClassificationSamples(
        [samples.images[i] for i in keep],
        [samples.labels[i] - low for i in keep],
        samples.classnames[low:high],
        [samples.origins[i] for i in keep],
    )


def _check_classes(samples: ClassificationSamples, attr_names: str, require_all: bool) -> None:
    counts = torch.bincount(torch.tensor(samples.labels, dtype=torch.long), minlength=len(samples.classnames))
    empty = [samples.classnames[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty and require_all:
        raise ValueError(f"dataset {attr_names}: class(es) {empty} have no images; every class needs at least one.")


def load_clip_datasets(
    data_args: "ClipDataArguments", task: str, seed: int, image_processor: Any, tokenizer: Any
) -> ClipDatasets:
    spec = ImageSpec.from_processor(image_processor, data_args)
    splits = {
        "train": data_args.dataset,
        "eval": data_args.eval_dataset,
        "val": data_args.val_dataset,
        "predict": data_args.predict_dataset,
    }
    attrs = {key: get_dataset_attrs(split_names(v), data_args.dataset_dir, task) for key, v in splits.items() if v}
    samples = {key: _merge(value, data_args.max_samples, seed) for key, value in attrs.items()}
    if task == "classification":
        samples = {key: subsample_classes(value, data_args.subsample_classes) for key, value in samples.items()}
    first_attrs = next(iter(attrs.values()))
    templates = dataset_templates(data_args, first_attrs)

    classnames = None
    if task == "classification":
        classnames = next(iter(samples.values())).classnames
        first = next(iter(samples))
        for key, part in samples.items():
            if part.classnames != classnames:
                raise ValueError(
                    f"The {key} dataset ({splits[key]}) has classes {part.classnames}, but the {first} dataset "
                    f"({splits[first]}) has {classnames}: train, eval and val datasets must share one class list. "
                    "When a split lacks some classes (its class list is read from its own labels), give its "
                    "dataset_info.json entry the full `classnames` (a list or a text file)."
                )
            _check_classes(part, splits[key], require_all=key == "train")

    def build(key: str) -> Any | None:
        if key not in samples:
            return None
        transform = spec.train_transform() if key == "train" else spec.eval_transform()
        if isinstance(samples[key], CaptionSamples):
            return CaptionDataset(
                samples[key], transform, tokenizer, data_args.max_caption_length, key == "train", seed
            )
        dataset = ClassificationDataset(samples[key], transform, seed)
        shots = data_args.num_shots
        if shots is not None and key in ("train", "val"):
            shots = shots if key == "train" else validation_shots(shots)
            _warn_short_classes(dataset, shots, key, splits[key])
            dataset = dataset.subset(sample_per_class(dataset.labels, shots, seed))
            logger.info_rank0(f"{key} dataset: {shots} shots per class, {len(dataset)} images.")
        return dataset

    built = {key: build(key) for key in splits}
    for key in ("eval", "val"):
        if built["train"] is not None and built[key] is not None:
            _warn_shared_images(built["train"], built[key], key, splits)
    return ClipDatasets(built["train"], built["eval"], built["val"], classnames, templates, spec, built["predict"])


def _warn_short_classes(dataset: ClassificationDataset, shots: int, key: str, names: str) -> None:
    counts = torch.bincount(dataset.labels, minlength=len(dataset.samples.classnames)).tolist()
    short = [f"{dataset.samples.classnames[i]} ({n})" for i, n in enumerate(counts) if n < shots]
    if short:
        logger.warning_rank0(
            f"num_shots: {shots} {key} images per class asked for, but {len(short)} class(es) of {names} have "
            f"fewer and use all they have: {', '.join(short[:10])}{' ...' if len(short) > 10 else ''}."
        )


def _warn_shared_images(train: Any, other: Any, key: str, splits: dict[str, str]) -> None:
    pairs = shared_images(train.samples.images, other.samples.images)
    if pairs:
        first, second = pairs[0]
        logger.warning_rank0(
            f"{len(pairs)} of the {len(other)} {key} images ({splits[key]}) are also training images "
            f"({splits['train']}), byte for byte, e.g. `{describe(second)}` = `{describe(first)}`: "
            f"{key} results on them are not on unseen images."
        )
