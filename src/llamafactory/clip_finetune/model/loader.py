"""Load a Hugging Face CLIP checkpoint and its processor (tokenizer + image processor)."""

from typing import TYPE_CHECKING

import torch
from llamafactory.extras import logging
from transformers import AutoConfig, CLIPConfig, CLIPModel, CLIPProcessor


if TYPE_CHECKING:
    from ..hparams import ClipModelArguments


logger = logging.get_logger(__name__)


def load_clip(model_args: "ClipModelArguments") -> tuple[CLIPModel, CLIPProcessor]:
    kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    path = model_args.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ValueError(
            f"model_name_or_path: cannot load `{path}` ({err}). Without network access, point it at a local "
            "CLIP directory (config.json, model.safetensors, tokenizer and preprocessor files)."
        ) from err
    if not isinstance(config, CLIPConfig):
        raise ValueError(f"model_name_or_path: `{path}` is a `{config.model_type}` model, not a CLIP model.")
    model = CLIPModel.from_pretrained(
        path, dtype=torch.float32, attn_implementation=model_args.attn_implementation, **kwargs
    )
    processor = CLIPProcessor.from_pretrained(path, **kwargs)
    logger.info_rank0(
        f"Loaded CLIP {path}: image {config.vision_config.image_size}px / patch {config.vision_config.patch_size}, "
        f"projection dim {config.projection_dim}."
    )
    return model, processor
