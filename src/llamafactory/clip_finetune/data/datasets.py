"""Torch datasets that yield uint8 images (normalized later, on the device) with labels or caption tokens.

Random augmentation is a function of (seed, epoch, image index): each item draws from its own generator state, not
from the process's. So a run resumed mid-epoch, whatever the loader prefetched before the kill, sees the same
augmented images as the uninterrupted run, and so do runs with another number of loader workers or ranks.
"""

import contextlib
import hashlib
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import default_data_collator

from .device_decode import EncodedImages, encode
from .readers import CaptionSamples, ClassificationSamples


def item_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSeeded:
    """``seed`` and ``epoch`` decide an item's random draws; the Trainer's epoch reaches ``set_epoch`` through
    ``EpochCallback``, and passes over the same images (the feature cache's views) give ``epoch`` explicitly."""

    seed = 0
    epoch = 0
    decoded: list[torch.Tensor] | None = None  # the images decoded once (``image_cache``), else decoded per item
    device_decode = False  # JPEG files go to the device as bytes (``image_decode_device``)

    def pixels(self, index: int) -> dict[str, Any]:
        """Item ``index``'s transformed image (from the decoded store when there is one, else from its file), or its
        JPEG bytes and random draws for the device to finish (``data.device_decode``)."""
        if self.decoded is not None:
            return {"pixel_values": self.transform.steps(self.decoded[index])}
        image, origin = self.samples.images[index], self.samples.origins[index]
        encoded = encode(self.transform, image, origin) if self.device_decode else None
        if encoded is not None:
            return {"encoded": encoded}
        return {"pixel_values": self.transform(image, origin)}

    def views(self, index: int, views: int) -> dict[str, Any]:
        """Item ``index``'s image decoded once (or read from the store) and transformed ``views`` times, view v with
        epoch v's draws; or its JPEG bytes and the views' draws (``data.device_decode``)."""
        pipeline, image, origin = self.transform, self.samples.images[index], self.samples.origins[index]
        seeds = [self.seeded(index, view) for view in range(views)]
        if self.decoded is None and self.device_decode:
            encoded = encode(pipeline, image, origin, seeds)
            if encoded is not None:
                return {"encoded": encoded}
        picture = self.decoded[index] if self.decoded is not None else pipeline.decode(image, origin)
        out = []
        for seed in seeds:
            with seed:
                out.append(pipeline.steps(picture))
        return {"pixel_values": torch.stack(out)}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @contextlib.contextmanager
    def seeded(self, index: int, epoch: int | None = None):
        with torch.random.fork_rng(devices=[]):  # the CPU generator only: the transforms draw from it
            # not torch.manual_seed, which also (lazily) reseeds every CUDA generator, 0.5 ms per item for nothing
            torch.default_generator.manual_seed(item_seed(self.seed, self.epoch if epoch is None else epoch, index))
            yield

    def generator(self, indices: torch.Tensor, device: torch.device) -> torch.Generator:
        """One generator for a batch drawn at once (cached views), seeded by its indices and the epoch."""
        key = hashlib.blake2b(indices.cpu().numpy().tobytes(), digest_size=8).hexdigest()
        seed = item_seed(self.seed, self.epoch, int(key, 16) % 2**62)
        return torch.Generator(device=device).manual_seed(seed)


class ClassificationDataset(EpochSeeded, Dataset):
    def __init__(self, samples: ClassificationSamples, transform: Any, seed: int = 0):
        """``transform(image_reference, origin)``: an ``ImagePipeline`` that decodes and transforms."""
        self.samples = samples
        self.labels = torch.tensor(samples.labels, dtype=torch.long)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples.images)

    def __getitem__(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        with self.seeded(index, epoch):
            return {**self.pixels(index), **self.targets(index)}

    def targets(self, index: int) -> dict[str, Any]:
        return {"labels": self.labels[index]}

    def batch_targets(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, Any]:
        return {"labels": self.labels[indices]}

    def subset(self, indices: torch.Tensor) -> "ClassificationDataset":
        picked = indices.tolist()
        s = self.samples
        samples = ClassificationSamples(
            [s.images[i] for i in picked], [s.labels[i] for i in picked], s.classnames, [s.origins[i] for i in picked]
        )
        return ClassificationDataset(samples, self.transform, self.seed)


class CaptionDataset(EpochSeeded, Dataset):
    """Images with their captions, tokenized once.

    Training items pair an image with one of its captions, drawn at random each time. Evaluation items are the
    images alone; ``input_ids``/``attention_mask`` hold every caption and ``caption_image`` says whose it is.
    """

    def __init__(
        self, samples: CaptionSamples, transform: Any, tokenizer: Any, max_length: int, train: bool, seed: int = 0
    ):
        self.samples = samples
        self.seed = seed
        self.transform = transform
        self.train = train
        self.max_length = max_length
        self.tokenize(tokenizer)
        counts = torch.tensor([len(captions) for captions in samples.captions])
        self.caption_image = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.caption_start = torch.cumsum(counts, 0) - counts
        self.caption_count = counts

    def tokenize(self, tokenizer: Any) -> None:
        """Every caption's tokens (a ``model.families.TextTokenizer``; again when a learned context needs slots)."""
        flat = [caption for captions in self.samples.captions for caption in captions]
        tokens = tokenizer(flat, max_length=self.max_length)
        self.input_ids = tokens["input_ids"]
        self.attention_mask = tokens["attention_mask"]

    def __len__(self) -> int:
        return len(self.samples.images)

    def __getitem__(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        with self.seeded(index, epoch):
            return {**self.pixels(index), **self.targets(index)}

    def targets(self, index: int) -> dict[str, Any]:
        if not self.train:
            return {}
        pick = self.caption_start[index] + torch.randint(int(self.caption_count[index]), ()).item()
        return {"input_ids": self.input_ids[pick], "attention_mask": self.attention_mask[pick]}

    def batch_targets(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, Any]:
        if not self.train:
            return {}
        draw = torch.rand(len(indices), generator=generator, device=generator.device if generator else None).cpu()
        pick = self.caption_start[indices] + (draw * self.caption_count[indices]).long()
        return {"input_ids": self.input_ids[pick], "attention_mask": self.attention_mask[pick]}


class CachedViewsDataset(Dataset):
    """Precomputed frozen-backbone features of ``views`` augmented views per image: an item is one random view.

    ``features`` is [images, views, dim]; ``source`` is the dataset they came from, for its labels or captions
    (only its target tensors are kept, not its images). ``__getitems__`` gathers a whole batch in one indexing
    operation and returns it collated."""

    def __init__(self, features: torch.Tensor, source: Any):
        self.features = features
        self.source = source
        self.targets = source.targets

    def __len__(self) -> int:
        return self.features.shape[0]

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        index, device = torch.as_tensor(indices), self.features.device
        generator = self.source.generator(index, device)
        views = torch.randint(self.features.shape[1], (len(index),), device=device, generator=generator)
        # the gather runs where the features live (the GPU when they fit there)
        return {"pooled": self.features[index.to(device), views], **self.source.batch_targets(index, generator)}


class ViewsDataset(Dataset):
    """``views`` augmented views of each image of ``dataset[indices]``, all from one decode: item i is image
    ``indices[i]``'s views ([views, 3, size, size], or its JPEG bytes and every view's draws for the device), view v
    drawn as epoch v would draw it, so that the views differ and each is reproducible."""

    def __init__(self, dataset: Any, indices: list[int], views: int):
        self.dataset, self.indices, self.views = dataset, indices, views

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset.views(self.indices[i], self.views)


def collated(batch: dict[str, Any]) -> dict[str, Any]:
    """Collate function for datasets whose ``__getitems__`` already returns a batch."""
    return batch


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage's collator: stacked tensors, and a batch's device-decoded images (``encoded``) kept apart with the
    rows they fill; ``device_decode.assemble`` puts them together on the device."""
    rows = [row for row, item in enumerate(items) if "encoded" in item]
    if not rows:
        return default_data_collator(items)
    encoded = [items[row]["encoded"] for row in rows]
    pixels = [item["pixel_values"] for item in items if "pixel_values" in item]
    rest = [{k: v for k, v in item.items() if k not in ("encoded", "pixel_values")} for item in items]
    batch = default_data_collator(rest)
    if pixels:
        batch["pixel_values"] = torch.stack(pixels)
    batch["encoded"] = EncodedImages(encoded, rows, len(items))
    return batch
