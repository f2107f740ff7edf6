"""Decode JPEG images on the accelerator (``image_decode_device``): loader workers only read each file's bytes and
draw its crop; the main process decodes the batch with nvJPEG (TorchCodec, one call per batch), then crops, resizes
and flips each image there.

The draws are the CPU path's: a worker reads the picture's size from the JPEG header and makes, under the item's
seed, the random-resized-crop and flip draws the CPU transforms make on the decoded picture, and the device runs the
same torchvision kernels with them. So both paths crop the same boxes; on the CPU they give the same pixels.
Other files (PNG, WebP, ..., CMYK JPEGs) are decoded and transformed in the worker as on the CPU path.
"""

import contextlib
import functools
import io
from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.extras import logging
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .transforms import ImagePipeline, decode


logger = logging.get_logger(__name__)

DEVICE_MODES = ("RGB", "L")  # colour and gray JPEGs; nvJPEG is not given CMYK/YCCK ones
ORIENTATION = 0x0112
EXIF_SWAPS = (5, 6, 7, 8)  # orientations that exchange height and width
INVERSE = {6: 8, 8: 6}  # the others undo themselves


@dataclass
class EncodedImage:
    """One item's JPEG bytes, one row per view of its EXIF orientation tag and draws (crop box: top, left, height,
    width, the whole picture when the pipeline has no random crop; flip: [views, 6] rows of [orientation, top, left,
    height, width, flip]), and the pipeline that finishes it (one object per batch when pickled from a worker)."""

    data: torch.Tensor
    plan: torch.Tensor
    name: str  # the file, and where it was listed: for error messages
    origin: str
    pipeline: ImagePipeline
    views: bool  # finished as [views, 3, size, size] (cached views), else as one [3, size, size] image


class EncodedImages:
    """A batch's encoded images and which of the batch's ``size`` rows they fill. Stays on the host: pinning and
    the Trainer's device transfer leave it alone (nvJPEG reads host bytes)."""

    def __init__(self, items: list[EncodedImage], rows: list[int], size: int):
        self.items, self.rows, self.size = items, rows, size

    def pin_memory(self) -> "EncodedImages":
        return self


def read_bytes(image: Any) -> bytes:
    if isinstance(image, str):
        with open(image, "rb") as f:
            return f.read()
    if isinstance(image, dict) and image.get("bytes") is not None:
        return bytes(image["bytes"])
    with open(image["path"], "rb") as f:
        return f.read()


def encode(pipeline: ImagePipeline, image: Any, origin: str, seeds: list[Any] | None = None) -> EncodedImage | None:
    """In a loader worker: the file's bytes and its draws, or ``None`` when it is not a JPEG the device decodes
    (then the caller decodes it here). ``seeds``: for cached views, one context per view that seeds the CPU generator
    as the CPU path does for that view; else one image, under the caller's seed. Reads the header only; a broken file
    fails later with the CPU path's error."""
    try:
        data = read_bytes(image)
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode not in DEVICE_MODES:
                return None
            width, height = img.size
            orientation = int(img.getexif().get(ORIENTATION, 1))
    except Exception:  # unreadable here: the CPU path raises its message naming the file
        return None
    orientation = orientation if 1 <= orientation <= 8 else 1
    if orientation in EXIF_SWAPS and pipeline.exif_transpose:
        height, width = width, height
    rows = []
    for seed in seeds or [contextlib.nullcontext()]:
        with seed:
            box, flip = draws(pipeline.transforms, height, width)
        rows.append([orientation, *box, flip])
    name = image if isinstance(image, str) else str(image.get("path") or "")
    plan = torch.tensor(rows, dtype=torch.long)
    data = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return EncodedImage(data, plan, name, origin, pipeline, seeds is not None)


def draws(steps: list[v2.Transform], height: int, width: int) -> tuple[list[int], int]:
    """The random draws ``steps`` make on a ``height`` x ``width`` picture, in their order (the CPU path's RNG use)."""
    box, flip = [0, 0, height, width], 0
    shape = torch.empty((0, height, width), dtype=torch.uint8)  # a size for make_params, no pixels
    for step in steps:
        if isinstance(step, v2.RandomResizedCrop):
            params = step.make_params([shape])
            box = [params["top"], params["left"], params["height"], params["width"]]
        elif isinstance(step, v2.RandomHorizontalFlip):
            flip = int(torch.rand(1).item() < step.p)
    return box, flip


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Pillow's ``exif_transpose`` on a (C, H, W) tensor."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-2, -1)  # 5 is the transpose; 6, 7, 8 are it followed by a flip
        if orientation == 6:
            return image.flip(-1)
        if orientation == 7:
            return image.flip(-2, -1)
        if orientation == 8:
            return image.flip(-2)
        return image
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    return image


def correction(tag: int, applied: bool, wanted: bool) -> int:
    """The orientation to apply to a picture decoded with its EXIF ``tag`` ``applied`` or not, so that it ends up
    oriented when ``wanted`` (``exif_transpose``), as the file's raw pixels otherwise."""
    if applied == wanted:
        return 1
    return tag if wanted else INVERSE.get(tag, tag)


@functools.cache
def decoder_orients(device: torch.device) -> bool:
    """Whether TorchCodec's JPEG decoder applies the EXIF orientation itself on ``device`` (its CPU decoder does):
    read off a 16 x 8 picture tagged as rotated."""
    from torchcodec.decoders import decode_jpeg

    out, exif = io.BytesIO(), Image.Exif()
    exif[ORIENTATION] = 6
    Image.new("RGB", (16, 8)).save(out, format="JPEG", exif=exif.tobytes())
    return decode_jpeg(torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8), device=device).shape[-2] == 16


def finish(steps: list[v2.Transform], image: torch.Tensor, plan: list[int], orientation: int) -> torch.Tensor:
    """``steps`` on ``image`` (turned by ``orientation`` first) with the worker's draws: the CPU path's kernels."""
    image = orient(image, orientation)
    for step in steps:
        if isinstance(step, v2.RandomResizedCrop):
            image = F.resized_crop(
                image, *plan[1:5], size=step.size, interpolation=step.interpolation, antialias=step.antialias
            )
        elif isinstance(step, v2.RandomHorizontalFlip):
            image = F.horizontal_flip(image) if plan[5] else image
        else:
            image = step(image)
    return image


def unoriented(item: EncodedImage) -> torch.Tensor:
    """``item`` decoded on the CPU by the CPU path's decoder (its errors name the file), not turned by its EXIF tag:
    ``finish`` does that for every image alike."""
    return decode(
        {"bytes": item.data.numpy().tobytes(), "path": item.name}, item.origin, item.pipeline.background, False
    )


def decode_encoded(encoded: EncodedImages, device: torch.device) -> torch.Tensor:
    """The batch's encoded images decoded on ``device`` in one call and finished there, every view from the one
    decode: [n, 3, size, size] uint8, or [n, views, 3, size, size]. A batch nvJPEG refuses is decoded image by image
    on the CPU, where a broken file gets the CPU path's error."""
    from torchcodec.decoders import decode_jpeg

    try:
        images = decode_jpeg([item.data for item in encoded.items], mode="RGB", device=device)
        applied = decoder_orients(device)
    except (RuntimeError, ValueError) as err:
        logger.warning_once(f"image_decode_device: the device decoder refused a batch ({err}); decoded on the CPU.")
        images = [unoriented(item).to(device) for item in encoded.items]
        applied = False
    pipeline = encoded.items[0].pipeline
    finished = []  # one image at a time: the pictures differ in size until they are cropped
    for image, item in zip(images, encoded.items, strict=True):
        turn = correction(int(item.plan[0, 0]), applied, pipeline.exif_transpose)
        views = torch.stack([finish(pipeline.transforms, image, p, turn) for p in item.plan.tolist()])
        finished.append(views if item.views else views[0])
    return torch.stack(finished)


def assemble(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``pixel_values`` of a whole batch on ``device``: the device-decoded rows and the worker-decoded ones."""
    encoded = batch.pop("encoded", None)
    if encoded is None:
        return batch
    decoded = decode_encoded(encoded, device)
    total = encoded.size
    if len(encoded.rows) == total:
        batch["pixel_values"] = decoded
        return batch
    pixels = torch.empty((total, *decoded.shape[1:]), dtype=torch.uint8, device=device)
    on_device = torch.zeros(total, dtype=torch.bool)
    on_device[encoded.rows] = True
    pixels[on_device.to(device)] = decoded
    pixels[~on_device.to(device)] = batch["pixel_values"].to(device, non_blocking=True)
    batch["pixel_values"] = pixels
    return batch


def probe_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(out, format="JPEG")
    return out.getvalue()


def use_device_decode(choice: str, device: torch.device) -> bool:
    """Whether this run's JPEG files are decoded on ``device`` (``image_decode_device``); the decision is logged."""
    if choice == "cpu":
        return False
    if device.type != "cuda":
        if choice == "cuda":
            raise ValueError(f"image_decode_device: cuda needs a CUDA device, but this run uses {device}; use auto.")
        return False
    from torchcodec.decoders import decode_jpeg

    try:
        decode_jpeg([torch.frombuffer(bytearray(probe_jpeg()), dtype=torch.uint8)], device=device)
    except Exception as err:  # a driver or library mismatch: nvJPEG unusable on this host
        if choice == "cuda":
            raise ValueError(f"image_decode_device: cuda, but nvJPEG cannot decode on {device}: {err}") from err
        logger.warning_rank0(f"image_decode_device auto: nvJPEG cannot decode on {device} ({err}); CPU decoding.")
        return False
    logger.info_rank0(
        f"image_decode_device {choice}: JPEG files are decoded on {device} (nvJPEG, a batch at a time) and cropped, "
        "resized and flipped there; other formats are decoded in the loader workers."
    )
    return True
