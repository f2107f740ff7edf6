"""Load a Hugging Face CLIP checkpoint and its processor (tokenizer + image processor)."""

from typing import TYPE_CHECKING

import torch
from llamafactory.extras import logging
from transformers import AutoConfig, CLIPConfig, CLIPModel, CLIPProcessor

from ..hparams.model_args import ADAPTER_CONFIG, is_adapter_dir


if TYPE_CHECKING:
    from ..hparams import ClipModelArguments


logger = logging.get_logger(__name__)


def load_clip(model_args: "ClipModelArguments") -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP checkpoint, or a PEFT run's output dir: its base checkpoint with the adapter loaded (frozen)."""
    path = model_args.model_name_or_path
    if is_adapter_dir(path):
        from peft import PeftConfig, PeftModel

        from .. import peft_tuners  # noqa: F401  (registers clip_adapter and clip_vpt with PEFT)

        base = PeftConfig.from_pretrained(path).base_model_name_or_path
        model, _ = _load_checkpoint(base, model_args, f"the base checkpoint named in {path}/{ADAPTER_CONFIG}")
        logger.info_rank0(f"Loaded the adapter of {path} over {base}.")
        return PeftModel.from_pretrained(model, path), CLIPProcessor.from_pretrained(path)
    return _load_checkpoint(path, model_args, "model_name_or_path")


def _load_checkpoint(path: str, model_args: "ClipModelArguments", what: str) -> tuple[CLIPModel, CLIPProcessor]:
    kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ValueError(
            f"{what}: cannot load `{path}` ({err}). Without network access, point it at a local "
            "CLIP directory (config.json, model.safetensors, tokenizer and preprocessor files)."
        ) from err
    if not isinstance(config, CLIPConfig):
        raise ValueError(f"{what}: `{path}` is a `{config.model_type}` model, not a CLIP model.")
    model = CLIPModel.from_pretrained(
        path, dtype=torch.float32, attn_implementation=model_args.attn_implementation, **kwargs
    )
    processor = CLIPProcessor.from_pretrained(path, **kwargs)
    logger.info_rank0(
        f"Loaded CLIP {path}: image {config.vision_config.image_size}px / patch {config.vision_config.patch_size}, "
        f"projection dim {config.projection_dim}."
    )
    return model, processor
