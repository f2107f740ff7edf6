"""Torch datasets that yield uint8 images (normalized later, on the device) with labels or caption tokens."""

from typing import Any

import torch
from torch.utils.data import Dataset

from .readers import CaptionSamples, ClassificationSamples


class ClassificationDataset(Dataset):
    def __init__(self, samples: ClassificationSamples, transform: Any):
        """``transform(image_reference, origin)``: an ``ImagePipeline`` that decodes and transforms."""
        self.samples = samples
        self.labels = torch.tensor(samples.labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.transform(self.samples.images[index], self.samples.origins[index])
        return {"pixel_values": image, **self.targets(index)}

    def targets(self, index: int) -> dict[str, Any]:
        return {"labels": self.labels[index]}

    def batch_targets(self, indices: torch.Tensor) -> dict[str, Any]:
        return {"labels": self.labels[indices]}

    def subset(self, indices: torch.Tensor) -> "ClassificationDataset":
        picked = indices.tolist()
        s = self.samples
        samples = ClassificationSamples(
            [s.images[i] for i in picked], [s.labels[i] for i in picked], s.classnames, [s.origins[i] for i in picked]
        )
        return ClassificationDataset(samples, self.transform)


class CaptionDataset(Dataset):
    """Images with their captions, tokenized once.

    Training items pair an image with one of its captions, drawn at random each time. Evaluation items are the
    images alone; ``input_ids``/``attention_mask`` hold every caption and ``caption_image`` says whose it is.
    """

    def __init__(self, samples: CaptionSamples, transform: Any, tokenizer: Any, max_length: int, train: bool):
        self.samples = samples
        self.transform = transform
        self.train = train
        flat = [caption for captions in samples.captions for caption in captions]
        tokens = tokenizer(flat, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        self.input_ids = tokens["input_ids"]
        self.attention_mask = tokens["attention_mask"]
        counts = torch.tensor([len(captions) for captions in samples.captions])
        self.caption_image = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.caption_start = torch.cumsum(counts, 0) - counts
        self.caption_count = counts

    def __len__(self) -> int:
        return len(self.samples.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.transform(self.samples.images[index], self.samples.origins[index])
        return {"pixel_values": image, **self.targets(index)}

    def targets(self, index: int) -> dict[str, Any]:
        if not self.train:
            return {}
        pick = self.caption_start[index] + torch.randint(int(self.caption_count[index]), ()).item()
        return {"input_ids": self.input_ids[pick], "attention_mask": self.attention_mask[pick]}

    def batch_targets(self, indices: torch.Tensor) -> dict[str, Any]:
        if not self.train:
            return {}
        pick = self.caption_start[indices] + (torch.rand(len(indices)) * self.caption_count[indices]).long()
        return {"input_ids": self.input_ids[pick], "attention_mask": self.attention_mask[pick]}


class CachedViewsDataset(Dataset):
    """Precomputed frozen-backbone features of ``views`` augmented views per image: an item is one random view.

    ``features`` is [images, views, dim]; ``source`` is the dataset they came from, for its labels or captions
    (only its target tensors are kept, not its images). ``__getitems__`` gathers a whole batch in one indexing
    operation and returns it collated."""

    def __init__(self, features: torch.Tensor, source: Any):
        self.features = features
        self.targets = source.targets
        self.batch_targets = source.batch_targets

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        view = torch.randint(self.features.shape[1], ()).item()
        return {"pooled": self.features[index, view], **self.targets(index)}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        index, device = torch.as_tensor(indices), self.features.device
        views = torch.randint(self.features.shape[1], (len(index),), device=device)
        # the gather runs where the features live (the GPU when they fit there)
        return {"pooled": self.features[index.to(device), views], **self.batch_targets(index)}


def collated(batch: dict[str, Any]) -> dict[str, Any]:
    """Collate function for datasets whose ``__getitems__`` already returns a batch."""
    return batch
