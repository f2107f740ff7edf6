from dataclasses import dataclass, field
from typing import Literal

from PIL import ImageColor


TRANSFORMS = ("random_resized_crop", "random_flip", "center_crop", "normalize")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def split_names(value: str | None) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()] if value else []


@dataclass
class ClipDataArguments:
    r"""Which datasets to read (from ``dataset_dir/dataset_info.json``) and how images become tensors."""

    dataset: str | None = field(default=None, metadata={"help": "Training dataset name(s), comma separated."})
    eval_dataset: str | None = field(default=None, metadata={"help": "Evaluation (test) dataset name(s)."})
    val_dataset: str | None = field(
        default=None,
        metadata={"help": "Validation dataset for model selection; with num_shots it keeps min(K, 4) per class."},
    )
    predict_dataset: str | None = field(
        default=None,
        metadata={
            "help": "do_predict: dataset name(s) whose images get top-k predictions (output_dir/predictions.jsonl)."
        },
    )
    predict_top_k: int = field(
        default=5, metadata={"help": "do_predict: classes (or captions, images) per prediction."}
    )
    dataset_dir: str = field(default="data", metadata={"help": "Folder holding dataset_info.json."})
    num_shots: int | None = field(default=None, metadata={"help": "K training images per class (all if unset)."})
    templates: list[str] | None = field(
        default=None,
        metadata={"help": "Prompt templates with one `{}` for the class name; several are averaged."},
    )
    image_size: int | None = field(default=None, metadata={"help": "Input size (default: the processor's)."})
    interpolation: str | None = field(default=None, metadata={"help": "bicubic, bilinear or nearest."})
    image_mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean (RGB, 0..1)."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Per-channel std (RGB, 0..1)."})
    train_transforms: list[str] = field(
        default_factory=lambda: ["random_resized_crop", "random_flip", "normalize"],
        metadata={"help": f"Training transforms, from {TRANSFORMS}."},
    )
    crop_scale: list[float] | None = field(
        default=None,
        metadata={
            "help": "random_resized_crop's area range [min, max] (default: torchvision's [0.08, 1.0]; "
            "finetuning_type tip: [0.5, 1.0], as Tip-Adapter's paper)."
        },
    )
    image_background: str = field(
        default="white",
        metadata={"help": "Colour transparent pixels are composited onto (a name or #rrggbb, as Pillow reads it)."},
    )
    exif_transpose: bool = field(
        default=True, metadata={"help": "Rotate/flip each image by its EXIF orientation tag, as viewers show it."}
    )
    max_caption_length: int = field(default=77, metadata={"help": "Captions are truncated to this many tokens."})
    subsample_classes: Literal["all", "base", "new"] = field(
        default="all",
        metadata={"help": "CoOp base-to-new: base keeps the first half of the classes (rounded up), new the rest."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Keep at most this many samples per dataset."})
    image_cache: Literal["auto", "none", "memory"] = field(
        default="auto",
        metadata={
            "help": "Decode each training image once into host memory (shorter side ceil(8/7 x image size)), so "
            "epochs and cached views only crop and flip. auto: when the store's estimate is at most 8 GiB."
        },
    )
    image_decode_device: Literal["auto", "cpu", "cuda"] = field(
        default="auto",
        metadata={
            "help": "Where JPEG files are decoded: cuda sends their bytes to the GPU, decoded there a batch at a time "
            "(nvJPEG) and cropped, resized and flipped there. auto: cuda when the run trains on a CUDA device."
        },
    )

    def __post_init__(self):
        if self.predict_top_k < 1:
            raise ValueError(f"predict_top_k must be at least 1, got {self.predict_top_k}.")
        if self.num_shots is not None and self.num_shots < 1:
            raise ValueError(f"num_shots must be a positive number of images per class, got {self.num_shots}.")
        unknown = [name for name in self.train_transforms if name not in TRANSFORMS]
        if unknown:
            raise ValueError(f"train_transforms: unknown transform(s) {unknown}; choose from {list(TRANSFORMS)}.")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: `{self.interpolation}` is not one of {list(INTERPOLATIONS)}.")
        if self.crop_scale is not None and not (
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1
        ):
            raise ValueError(f"crop_scale needs [min, max] with 0 < min <= max <= 1, got {self.crop_scale}.")
        for key in ("image_mean", "image_std"):
            value = getattr(self, key)
            if value is not None and len(value) != 3:
                raise ValueError(f"{key} needs 3 values (R, G, B), got {value}.")
        try:
            ImageColor.getrgb(self.image_background)
        except ValueError:
            raise ValueError(
                f"image_background: `{self.image_background}` is not a colour; use a name (white) or #rrggbb."
            ) from None
        if self.templates is not None and any("{}" not in t for t in self.templates):
            raise ValueError(f"templates: every template needs a `{{}}` for the class name, got {self.templates}.")
