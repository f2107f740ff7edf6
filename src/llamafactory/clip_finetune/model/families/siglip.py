"""SigLIP, SigLIP 2 (fixed resolution: ``SiglipModel``) and SigLIP 2 NaFlex (``Siglip2Model``).

What differs from CLIP (read in transformers' ``modeling_siglip*.py``): no projections (the image feature is the
attention-pooling head's output, the text feature the last token's state through the text tower's ``head``); no class
token; logits are ``exp(logit_scale) * cos + logit_bias`` and pretraining used the pairwise sigmoid loss; texts are
lower-cased and padded to 64 tokens, with no padding mask (the last position is what the text tower pools, as in
big_vision and open_clip)."""

import torch
from torch import nn

from .base import Family


class SiglipFamily(Family):
    name = "siglip"
    model_types = ("siglip",)
    model_class_name = "SiglipModel"
    loss = "sigmoid"
    prefix_tokens = 0
    text_padding = 64
    lower_case = True
    adapter_targets = {"vision": ["vision_model.head"], "text": ["text_model.head"]}

    @staticmethod
    def image_modules(clip: nn.Module) -> list[nn.Module]:
        return [clip.vision_model]

    @staticmethod
    def text_modules(clip: nn.Module) -> list[nn.Module]:
        return [clip.text_model]

    @staticmethod
    def logit_parameters(clip: nn.Module) -> list[nn.Parameter]:
        return [clip.logit_scale, clip.logit_bias]

    @staticmethod
    def feature_width(clip: nn.Module) -> int:
        return clip.config.vision_config.hidden_size

    @staticmethod
    def pooled_image(clip: nn.Module, pixels: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        """The vision model's forward, with the pooling head's own output: a CLIP-Adapter wrapping the head applies in
        ``project_image``, so pooled outputs can be cached while the adapter trains."""
        vision = clip.vision_model
        hidden = vision.embeddings(pixels, interpolate_pos_encoding=interpolate_pos_encoding)
        return _pool(vision, vision.encoder(inputs_embeds=hidden).last_hidden_state)

    @staticmethod
    def project_image(clip: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        head = clip.vision_model.head
        return head.adapt(pooled) if hasattr(head, "adapt") else pooled

    @staticmethod
    def pooled_frozen(clip: nn.Module) -> bool:
        return not any(p.requires_grad for n, p in clip.vision_model.named_parameters() if "clip_adapter_" not in n)

    @staticmethod
    def text_embeds(clip: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return clip.text_model(input_ids=input_ids).pooler_output

    @staticmethod
    def logit_scale(clip: nn.Module) -> torch.Tensor:
        return clip.logit_scale.exp()

    @staticmethod
    def logit_bias(clip: nn.Module) -> torch.Tensor:
        return clip.logit_bias[0]


def _pool(vision: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The vision model's final norm and its pooling head's own output (a CLIP-Adapter around the head excluded)."""
    return getattr(vision.head, "base_layer", vision.head)(vision.post_layernorm(hidden))


class Siglip2Family(SiglipFamily):
    """NaFlex: the vision tower takes patch rows (``[B, patches, p * p * 3]``, channels last within a patch) with
    their grid shapes. The stage feeds square images of the processor's largest square grid (``max_num_patches``
    patches, e.g. 16 x 16 = 256 at patch 16: 256 px), patchified on the device; every patch is real, so no mask."""

    name = "siglip2"
    model_types = ("siglip2",)
    model_class_name = "Siglip2Model"

    @staticmethod
    def pooled_image(clip: nn.Module, pixels: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        vision = clip.vision_model
        patch = vision.config.patch_size
        batch, channels, height, width = pixels.shape
        rows, cols = height // patch, width // patch
        patches = (
            pixels.reshape(batch, channels, rows, patch, cols, patch)
            .permute(0, 2, 4, 3, 5, 1)
            .reshape(batch, rows * cols, patch * patch * channels)
        )
        shapes = torch.tensor([[rows, cols]], device=pixels.device).expand(batch, 2)
        hidden = vision.embeddings(patches, shapes)
        return _pool(vision, vision.encoder(inputs_embeds=hidden).last_hidden_state)
