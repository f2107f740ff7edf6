"""Load a dual-encoder checkpoint of a supported family and its processor (tokenizer + image processor)."""

from typing import TYPE_CHECKING

import torch
from llamafactory.extras import logging
from torch import nn
from transformers import AutoConfig, AutoProcessor, ProcessorMixin

from ..hparams.model_args import ADAPTER_CONFIG, is_adapter_dir
from .families import family_of


if TYPE_CHECKING:
    from ..hparams import ClipModelArguments


logger = logging.get_logger(__name__)


def load_clip(model_args: "ClipModelArguments") -> tuple[nn.Module, ProcessorMixin]:
    """A checkpoint (loaded by its family's own class: ``CLIPModel``, ``SiglipModel``, ...), or a PEFT run's output
    dir: its base checkpoint with the adapter loaded (frozen)."""
    path = model_args.model_name_or_path
    if is_adapter_dir(path):
        from peft import PeftConfig, PeftModel

        from .. import peft_tuners  # noqa: F401  (registers clip_adapter and clip_vpt with PEFT)

        base = PeftConfig.from_pretrained(path).base_model_name_or_path
        model, _ = _load_checkpoint(base, model_args, f"the base checkpoint named in {path}/{ADAPTER_CONFIG}")
        logger.info_rank0(f"Loaded the adapter of {path} over {base}.")
        return PeftModel.from_pretrained(model, path), AutoProcessor.from_pretrained(path)
    return _load_checkpoint(path, model_args, "model_name_or_path")


def _load_checkpoint(path: str, model_args: "ClipModelArguments", what: str) -> tuple[nn.Module, ProcessorMixin]:
    kwargs = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
    except OSError as err:
        raise ValueError(
            f"{what}: cannot load `{path}` ({err}). Without network access, point it at a local "
            "checkpoint directory (config.json, model.safetensors, tokenizer and preprocessor files)."
        ) from err
    try:
        family = family_of(config)
    except ValueError as err:
        raise ValueError(f"{what}: `{path}`: {err}") from err
    model = family.model_class().from_pretrained(
        path, dtype=torch.float32, attn_implementation=model_args.attn_implementation, **kwargs
    )
    processor = AutoProcessor.from_pretrained(path, **kwargs)
    vision = config.vision_config
    logger.info_rank0(
        f"Loaded {family.model_class_name} {path} (family {family.name}): patch {vision.patch_size}, "
        f"image width {vision.hidden_size}, text width {config.text_config.hidden_size}."
    )
    return model, processor
