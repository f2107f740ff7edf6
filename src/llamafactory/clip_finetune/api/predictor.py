"""A trained run loaded once for serving: image and text embeddings, and classification against class prompts."""

import base64
import binascii
import dataclasses
import io
import os
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import HfArgumentParser

from ..data import get_dataset_attrs
from ..data.loader import dataset_templates
from ..data.readers import read_samples
from ..data.templates import DEFAULT_TEMPLATES
from ..data.transforms import ImageSpec
from ..hparams import ClipDataArguments, ClipModelArguments
from ..methods import saved_run
from ..model import ClipTaskModel, TextTokenizer, load_clip
from ..tasks import ClassificationTask
from .batching import MicroBatcher


# a request's image: its file size as sent (base64 text is 4/3 of it) and its pixel count, read from the header
# before decoding (a small file can decode to a huge image); both configurable through the environment
MAX_IMAGE_BYTES = int(float(os.getenv("CLIP_API_MAX_IMAGE_MB", "20")) * 2**20)
MAX_IMAGE_PIXELS = int(os.getenv("CLIP_API_MAX_IMAGE_PIXELS", str(40_000_000)))


class BadRequest(ValueError):
    """A request the server answers with 400 and this message."""


def parse_api_args(args: dict[str, Any]) -> tuple[ClipModelArguments, ClipDataArguments]:
    """The api yaml: ``stage: clip``, the run (``model_name_or_path``: an output dir or a checkpoint), and optionally
    ``dataset`` (whose class names classification uses) with ``dataset_dir`` and ``templates``."""
    args = dict(args)
    if args.pop("stage", None) != "clip":
        raise ValueError("The clip API serves `stage: clip` configs.")
    known = {f.name for cls in (ClipModelArguments, ClipDataArguments) for f in dataclasses.fields(cls)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) for the clip API: {unknown} (model and data keys only).")
    return HfArgumentParser((ClipModelArguments, ClipDataArguments)).parse_dict(args)


class ClipPredictor:
    """The run as the stage evaluates it: a ``ClipTaskModel`` (on-device normalization, the run's image size and
    position-embedding interpolation) and class features by ``ClassificationTask``'s prompt ensemble."""

    def __init__(self, model_args: ClipModelArguments, data_args: ClipDataArguments, device: str | None = None):
        self.name = model_args.model_name_or_path
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        saved = saved_run(model_args.model_name_or_path)
        if saved is not None:  # a run saved as a head (Tip-Adapter's cache, a probe) over the checkpoint it names
            model_args = dataclasses.replace(model_args, model_name_or_path=saved["checkpoint"])
        clip, self.processor = load_clip(model_args)
        spec = ImageSpec.from_processor(self.processor.image_processor, data_args)
        self.transform = spec.eval_transform()
        # no task: the server calls the model's feature methods, never its training forward
        self.model = ClipTaskModel(clip, nn.Identity(), spec, model_args.interpolate_pos_encoding)
        self.tokenizer = TextTokenizer(self.processor.tokenizer, self.model.family).for_model(clip)
        self.templates = data_args.templates or DEFAULT_TEMPLATES
        self.classnames: list[str] | None = None
        if data_args.dataset:  # its class names and templates, as a run on it uses them
            attrs = get_dataset_attrs(data_args.dataset.split(","), data_args.dataset_dir, "classification")
            self.classnames = read_samples(attrs[0]).classnames
            self.templates = dataset_templates(data_args, attrs)
        self.query_head: nn.Module | None = None  # an image_to_text Tip cache: image embeddings are its queries
        if saved is not None and not saved["classnames"]:
            self.query_head = saved["head"].to(self.device)
        elif saved is not None:
            self.model.head = saved["head"]
            if self.classnames not in (None, saved["classnames"]):
                raise ValueError(
                    f"{self.name}: the {saved['method']} head scores classes {saved['classnames']}, but `dataset` "
                    f"has {self.classnames}. Serve it with the dataset it was built on (or without `dataset`)."
                )
            self.classnames = saved["classnames"]
        self.model.to(self.device).eval()
        self.batcher = MicroBatcher(lambda pixels: self.model.image_features(pixels.to(self.device)))
        self._class_features = self.text_features_for(self.classnames) if self.classnames else None

    @torch.no_grad()
    def image_features(self, images: list[str]) -> torch.Tensor:
        """Base64-encoded image files -> L2-normalized image embeddings."""
        if not images:
            raise BadRequest("No image given.")
        pixels = []
        for i, image in enumerate(images):
            try:
                pixels.append(self.transform({"bytes": self._bytes(image, i)}, f"image {i}"))
            except (OSError, ValueError) as err:  # not an image Pillow reads
                raise BadRequest(str(err) if isinstance(err, BadRequest) else f"image {i}: {err}") from None
        features = self.batcher(torch.stack(pixels))  # with other requests' images, in one forward pass
        if self.query_head is not None:  # as ImageToTextTask.query: toward the captions of similar cached images
            features = nn.functional.normalize(features + self.query_head(features), dim=-1)
        return features

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts)
        return self.model.encode_texts(tokens["input_ids"], tokens["attention_mask"])

    @torch.no_grad()
    def text_features_for(self, labels: list[str]) -> torch.Tensor:
        """The prompt ensemble of each label, as classification builds its class features."""
        task = ClassificationTask(labels, self.templates, self.tokenizer, False).to(self.device)
        return task.encode_classes(self.model)

    @torch.no_grad()
    def classify(self, images: list[str], labels: list[str] | None, top_k: int) -> list[list[dict[str, Any]]]:
        if labels and self.model.head is not None and labels != self.classnames:
            raise BadRequest("This run's head scores the classes it was built on: omit `labels`.")
        if labels:
            weights, names = self.text_features_for(labels), labels
        elif self._class_features is not None:
            weights, names = self._class_features, self.classnames
        else:
            raise BadRequest("Give `labels`: this server was started without a `dataset` to read class names from.")
        # the family's scores, plus a Tip-Adapter cache's, or a probe's alone (ClassificationTask.logits)
        logits = ClassificationTask.logits(self.model, self.image_features(images), weights)
        # SigLIP scores each label on its own (sigmoid), as it was trained; CLIP-like families and probe heads
        # (trained with cross-entropy) over the labels
        probe = getattr(self.model.head, "replaces_logits", False)
        probs = logits.sigmoid() if self.model.family.loss == "sigmoid" and not probe else logits.softmax(-1)
        top = probs.topk(min(top_k, len(names)), dim=-1)
        return [
            [{"label": names[c], "score": s} for c, s in zip(idx, val, strict=True)]
            for idx, val in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]

    @staticmethod
    def _bytes(image: str, index: int) -> bytes:
        if not isinstance(image, str):
            raise BadRequest(f"image {index}: send each image as a base64 string.")
        try:
            data = base64.b64decode(image.split(",", 1)[-1] if image.startswith("data:") else image, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"image {index}: not valid base64.") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise BadRequest(f"image {index}: {len(data)} bytes, more than the {MAX_IMAGE_BYTES} allowed.")
        try:
            with Image.open(io.BytesIO(data)) as img:  # the header only: nothing is decoded here
                width, height = img.size
        except (OSError, ValueError, Image.DecompressionBombError):
            raise BadRequest(f"image {index}: not an image (Pillow cannot read its header).") from None
        if width * height > MAX_IMAGE_PIXELS:
            raise BadRequest(f"image {index}: {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} allowed.")
        return data
