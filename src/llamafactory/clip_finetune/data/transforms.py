"""Decoding and CPU-side transforms on uint8 tensors; normalization happens on the device (``ClipTaskModel``)."""

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageColor, ImageOps
from torchvision.transforms import InterpolationMode, v2


if TYPE_CHECKING:
    from ..hparams import ClipDataArguments


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
    squash: bool = False  # resize to size x size (SigLIP), else the shorter side to size, then a center crop
    crop_scale: tuple[float, float] = (0.08, 1.0)
    background: tuple[int, int, int] = (255, 255, 255)
    exif_transpose: bool = True

    @classmethod
    def from_processor(cls, image_processor: Any, data_args: "ClipDataArguments") -> "ImageSpec":
        native, squash = processor_size(image_processor)
        resample = getattr(image_processor, "resample", 3)
        return cls(
            size=int(data_args.image_size or native),
            squash=squash,
            interpolation=data_args.interpolation or PIL_RESAMPLE.get(int(resample), "bicubic"),
            mean=list(data_args.image_mean or image_processor.image_mean),
            std=list(data_args.image_std or image_processor.image_std),
            normalize="normalize" in data_args.train_transforms,
            train_transforms=list(data_args.train_transforms),
            crop_scale=tuple(data_args.crop_scale or (0.08, 1.0)),
            background=ImageColor.getrgb(data_args.image_background)[:3],
            exif_transpose=data_args.exif_transpose,
        )

    def train_transform(self) -> "ImagePipeline":
        mode = INTERPOLATION[self.interpolation]
        steps: list[v2.Transform] = []
        if "random_resized_crop" in self.train_transforms:
            steps.append(v2.RandomResizedCrop(self.size, scale=self.crop_scale, interpolation=mode, antialias=True))
        else:
            steps += self._resize()
        if "random_flip" in self.train_transforms:
            steps.append(v2.RandomHorizontalFlip())
        return ImagePipeline(v2.Compose(steps), self.background, self.exif_transpose)

    def eval_transform(self) -> "ImagePipeline":
        return ImagePipeline(v2.Compose(self._resize()), self.background, self.exif_transpose)

    def _resize(self) -> list[v2.Transform]:
        mode = INTERPOLATION[self.interpolation]
        if self.squash:
            return [v2.Resize((self.size, self.size), interpolation=mode, antialias=True)]
        return [v2.Resize(self.size, interpolation=mode, antialias=True), v2.CenterCrop(self.size)]


def processor_size(image_processor: Any) -> tuple[int, bool]:
    """(the input size an image processor produces, whether it squashes images to a square rather than resizing the
    shorter side and center-cropping): CLIP's crop, SigLIP's height x width, SigLIP 2 NaFlex's largest square grid."""
    crop = getattr(image_processor, "crop_size", None) or {}
    size = getattr(image_processor, "size", None) or {}
    if getattr(image_processor, "do_center_crop", False) and crop.get("height"):
        return int(crop["height"]), False
    if size.get("shortest_edge"):
        return int(size["shortest_edge"]), False
    if size.get("height"):
        return int(size["height"]), True
    if getattr(image_processor, "max_num_patches", None):
        return int(image_processor.max_num_patches**0.5) * int(image_processor.patch_size), True
    raise ValueError(f"{type(image_processor).__name__}: no input size found (crop_size, size or max_num_patches).")


class ImagePipeline:
    """Decode an image reference (``decode``), then apply the uint8 transforms: what a dataset item goes through."""

    def __init__(self, steps: v2.Compose, background: tuple[int, int, int], exif_transpose: bool):
        self.steps, self.background, self.exif_transpose = steps, background, exif_transpose

    @property
    def transforms(self) -> list[v2.Transform]:
        return self.steps.transforms

    def decode(self, image: Any, origin: str) -> torch.Tensor:
        return decode(image, origin, self.background, self.exif_transpose)

    def __call__(self, image: Any, origin: str) -> torch.Tensor:
        return self.steps(self.decode(image, origin))


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grayscale PNG/TIFF open as one of these


def to_rgb8(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """8-bit RGB: 16-bit gray scaled (not clipped) to 0..255, transparency composited onto ``background``."""
    if img.mode in SIXTEEN_BIT:
        values = np.asarray(img).astype(np.uint32)
        if values.max(initial=0) > 65535:
            raise ValueError(f"{img.mode} pixels above 65535 (a 32-bit image); convert it to 8-bit first")
        img = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))  # a 2-D uint8 array is mode L
    elif img.mode == "F":
        raise ValueError("a floating-point image; convert it to 8-bit first")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def image_source(image: Any) -> Any:
    """What Pillow opens for an image reference: a path, or the bytes of a ``{"bytes": ...}`` dict as a stream."""
    if isinstance(image, str):
        return image
    if isinstance(image, dict) and image.get("bytes") is not None:
        return io.BytesIO(image["bytes"])
    if isinstance(image, dict) and image.get("path"):
        return image["path"]
    raise ValueError(f"unsupported image reference {type(image).__name__}")


def image_name(image: Any) -> str:
    """The file an image reference names, for messages ("" for bytes without a path)."""
    return image if isinstance(image, str) else str((image.get("path") if isinstance(image, dict) else "") or "")


def decode(
    image: Any, origin: str, background: tuple[int, int, int] = (255, 255, 255), exif_transpose: bool = True
) -> torch.Tensor:
    """A path or a ``{"bytes"|"path": ...}`` dict -> uint8 RGB tensor (C, H, W); a clear error names the bad image.

    Any format Pillow reads (PNG, JPEG, GIF, WebP, BMP, TIFF, ...): the first frame of an animation, the EXIF
    orientation applied (unless ``exif_transpose`` is false), 16-bit images scaled to 8 bits, transparent pixels
    composited onto ``background``."""
    try:
        with Image.open(image_source(image)) as img:
            img.seek(0)
            img = ImageOps.exif_transpose(img) if exif_transpose else img
            rgb = to_rgb8(img, background)
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    except Exception as err:
        raise ValueError(f"Cannot read image {image_name(image)} ({origin}): {err}") from err
