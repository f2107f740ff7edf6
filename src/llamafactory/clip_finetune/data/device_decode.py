"""Decode JPEG images on the accelerator (``image_decode_device``): loader workers only read each file's bytes and
draw its crop; the main process decodes the batch with nvJPEG (TorchCodec, a chunk of images per call), then crops,
resizes and flips each image there.

The draws are the CPU path's: a worker reads the picture's size and EXIF orientation from the JPEG header and makes,
under the item's seed, the random-resized-crop and flip draws the CPU transforms make on the decoded picture, and the
device runs the same torchvision kernels with them. So both paths crop the same boxes; on the CPU they give the same
pixels. The worker drops the file's EXIF segments, so that no decoder turns the picture by itself (TorchCodec's do,
from EXIF only, where Pillow also reads an XMP orientation): ``orient`` applies the tag Pillow reads. Other files
(PNG, WebP, ..., CMYK JPEGs) are decoded and transformed in the worker as on the CPU path.
"""

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import torch
from llamafactory.extras import logging
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .transforms import ImagePipeline, decode, image_name, image_source


logger = logging.get_logger(__name__)

DEVICE_MODES = ("RGB", "L")  # colour and gray JPEGs; nvJPEG is not given CMYK/YCCK ones
ORIENTATION = 0x0112
EXIF_SWAPS = (5, 6, 7, 8)  # orientations that exchange height and width: a transpose first
TURNS = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}  # then flips of these dims
CHUNK = 64  # images decoded per call: a batch of large photos at full resolution would hold gigabytes at once


@dataclass
class EncodedImage:
    """One item's JPEG bytes (without EXIF), one row per view of [orientation to apply, crop box (top, left, height,
    width; the whole picture when the pipeline has no random crop), flip], and the pipeline that finishes it.
    Plain Python values: a worker sends them through its pipe, not as shared-memory tensors (two file handles per
    image, which a 1,024-handle limit runs out of at batch 256)."""

    data: bytes
    plan: list[list[int]]
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
    source = image_source(image)
    if isinstance(source, io.BytesIO):
        return source.getvalue()
    with open(source, "rb") as f:
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
            tag = int(img.getexif().get(ORIENTATION, 1))  # as Pillow's exif_transpose reads it (EXIF, else XMP)
    except Exception:  # unreadable here: the CPU path raises its message naming the file
        return None
    orientation = tag if pipeline.exif_transpose and 1 <= tag <= 8 else 1
    if orientation in EXIF_SWAPS:
        height, width = width, height
    rows = []
    for seed in seeds or [contextlib.nullcontext()]:
        with seed:
            box, flip = draws(pipeline.transforms, height, width)
        rows.append([orientation, *box, flip])
    return EncodedImage(without_exif(data), rows, image_name(image), origin, pipeline, seeds is not None)


def without_exif(data: bytes) -> bytes:
    """The JPEG without its EXIF segments (APP1 starting ``Exif\\0\\0``) before the image data; the rest unchanged."""
    if data[:2] != b"\xff\xd8":
        return data
    kept, i = [data[:2]], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xDA, 0xD9):  # start of scan (the compressed image follows) or end of image
            break
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if not (marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00"):
            kept.append(data[i:end])
        i = end
    kept.append(data[i:])
    return b"".join(kept)


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
    """Pillow's ``exif_transpose`` on a (C, H, W) tensor: a transpose for 5-8, then the flips of ``TURNS``."""
    image = image.transpose(-2, -1) if orientation in EXIF_SWAPS else image
    flips = TURNS.get(orientation, ())
    return image.flip(flips) if flips else image


def finish(steps: list[v2.Transform], image: torch.Tensor, plan: list[int]) -> torch.Tensor:
    """``steps`` on ``image`` (turned by its orientation first) with the worker's draws: the CPU path's kernels."""
    image = orient(image, plan[0])
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


def decoded_chunk(items: list[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    """``items`` decoded on ``device`` in one call, unoriented (their EXIF is gone). A chunk nvJPEG refuses is
    decoded image by image on the CPU by the CPU path's decoder, whose errors name the file."""
    from torchcodec.decoders import decode_jpeg

    buffer = torch.frombuffer(bytearray().join(item.data for item in items), dtype=torch.uint8)
    ends = torch.tensor([len(item.data) for item in items]).cumsum(0).tolist()
    sources = [buffer[end - len(item.data) : end] for item, end in zip(items, ends, strict=True)]
    try:
        return decode_jpeg(sources, mode="RGB", device=device)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError) as err:
        logger.warning_once(f"image_decode_device: the device decoder refused a batch ({err}); decoded on the CPU.")
        return [
            decode({"bytes": item.data, "path": item.name}, item.origin, item.pipeline.background, False).to(device)
            for item in items
        ]


def decode_encoded(encoded: EncodedImages, device: torch.device) -> torch.Tensor:
    """The batch's encoded images decoded on ``device`` (``CHUNK`` per call) and finished there, every view from the
    one decode: [n, 3, size, size] uint8, or [n, views, 3, size, size]."""
    steps = encoded.items[0].pipeline.transforms
    finished = []  # one image at a time: the pictures differ in size until they are cropped
    for start in range(0, len(encoded.items), CHUNK):
        chunk = encoded.items[start : start + CHUNK]
        for image, item in zip(decoded_chunk(chunk, device), chunk, strict=True):
            views = torch.stack([finish(steps, image, plan) for plan in item.plan])
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
    try:  # TorchCodec built for another torch fails at import; a driver too old for nvJPEG 13 at the decode
        from torchcodec.decoders import decode_jpeg

        decode_jpeg([torch.frombuffer(bytearray(probe_jpeg()), dtype=torch.uint8)], device=device)
    except Exception as err:
        if choice == "cuda":
            raise ValueError(f"image_decode_device: cuda, but nvJPEG cannot decode on {device}: {err}") from err
        logger.warning_rank0(f"image_decode_device auto: nvJPEG cannot decode on {device} ({err}); CPU decoding.")
        return False
    logger.info_rank0(
        f"image_decode_device {choice}: JPEG files are decoded on {device} (nvJPEG, a batch at a time) and cropped, "
        "resized and flipped there; other formats are decoded in the loader workers."
    )
    return True
