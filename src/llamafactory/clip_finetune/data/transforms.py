"""CPU-side image transforms on uint8 tensors; normalization happens on the device (see model/normalize.py)."""

from dataclasses import dataclass
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode, v2


INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}
PIL_RESAMPLE = {3: "bicubic", 2: "bilinear", 0: "nearest"}


@dataclass
class ImageSpec:
    """What images look like when they reach the model: size, interpolation, and the normalization stats."""

    size: int
    interpolation: str
    mean: list[float]
    std: list[float]
    normalize: bool
    train_transforms: list[str]
    crop_scale: tuple[float, float] = (0.08, 1.0)

    @classmethod
    def from_processor(cls, image_processor: Any, data_args: Any) -> "ImageSpec":
        crop = getattr(image_processor, "crop_size", None) or {}
        size = data_args.image_size or crop.get("height") or image_processor.size.get("shortest_edge")
        resample = getattr(image_processor, "resample", 3)
        return cls(
            size=int(size),
            interpolation=data_args.interpolation or PIL_RESAMPLE.get(int(resample), "bicubic"),
            mean=list(data_args.image_mean or image_processor.image_mean),
            std=list(data_args.image_std or image_processor.image_std),
            normalize="normalize" in data_args.train_transforms,
            train_transforms=list(data_args.train_transforms),
            crop_scale=tuple(data_args.crop_scale or (0.08, 1.0)),
        )

    def train_transform(self) -> v2.Transform:
        mode = INTERPOLATION[self.interpolation]
        steps: list[v2.Transform] = []
        if "random_resized_crop" in self.train_transforms:
            steps.append(v2.RandomResizedCrop(self.size, scale=self.crop_scale, interpolation=mode, antialias=True))
        else:
            steps += [v2.Resize(self.size, interpolation=mode, antialias=True), v2.CenterCrop(self.size)]
        if "random_flip" in self.train_transforms:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)

    def eval_transform(self) -> v2.Transform:
        mode = INTERPOLATION[self.interpolation]
        return v2.Compose([v2.Resize(self.size, interpolation=mode, antialias=True), v2.CenterCrop(self.size)])


def decode(image: Any, origin: str) -> torch.Tensor:
    """A path or a ``{"bytes": ...}`` dict -> uint8 RGB tensor (C, H, W); a clear error names the bad image."""
    try:
        if isinstance(image, str):
            data = torch.frombuffer(bytearray(open(image, "rb").read()), dtype=torch.uint8)
        elif isinstance(image, dict) and image.get("bytes") is not None:
            data = torch.frombuffer(bytearray(image["bytes"]), dtype=torch.uint8)
        elif isinstance(image, dict) and image.get("path"):
            data = torch.frombuffer(bytearray(open(image["path"], "rb").read()), dtype=torch.uint8)
        else:
            raise ValueError(f"unsupported image reference {type(image).__name__}")
        return decode_image(data, mode=ImageReadMode.RGB)
    except Exception as err:
        name = image if isinstance(image, str) else (image.get("path") if isinstance(image, dict) else "")
        raise ValueError(f"Cannot read image {name or ''} ({origin}): {err}") from err
