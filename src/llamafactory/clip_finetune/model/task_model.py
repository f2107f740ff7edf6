"""The module the Trainer trains: a CLIP model, on-device normalization, and a task that defines the loss."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import ImageSpec
from .families import family_of


class ClipTaskModel(nn.Module):
    """Wraps a dual encoder (``CLIPModel``, ``SiglipModel``, ...; or a PEFT model around one) for one task.

    Images arrive as uint8 and are scaled/normalized here, on the device. The logit scale (and bias) are the
    checkpoint's, the same in training and evaluation. What the encoder's parts are is its family's business
    (``model.families``)."""

    def __init__(self, clip: nn.Module, task: nn.Module, spec: ImageSpec, interpolate_pos_encoding: bool = False):
        super().__init__()
        self.interpolate_pos_encoding = interpolate_pos_encoding
        self.clip = clip
        self.family = family_of(clip.config)
        self.task = task
        self.normalize = spec.normalize
        self.register_buffer("pixel_mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self._mode_set: bool | None = None
        self._params: list[nn.Parameter] | None = None  # flat parameter list for zero_grad
        self.head: nn.Module | None = None  # a head on the image features that a method installs (Tip-Adapter)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if isinstance(value, (nn.Module, nn.Parameter)):
            self.__dict__["_params"] = None  # a new part may bring parameters: rebuild the list for zero_grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The HF Trainer clears gradients after every step; ``nn.Module.zero_grad`` walks the whole module tree for
        it, which costs more than a cached adapter step's arithmetic. Walk a flat list of the parameters instead
        (methods build their modules before this model wraps the CLIP; parts set on it later rebuild the list)."""
        if not set_to_none:
            return super().zero_grad(set_to_none)
        if self._params is None:
            self.__dict__["_params"] = list(self.parameters())
        for param in self._params:
            param.grad = None

    def train(self, mode: bool = True) -> "ClipTaskModel":
        """The HF Trainer calls ``train()`` before every step, and walking every submodule is a visible share of a
        small model's step. Modes change only through this method (evaluation goes through ``ClipTrainer.evaluate``,
        methods that keep a frozen part in eval mode override ``train`` on that part), so a call that changes
        nothing returns at once."""
        if mode != self._mode_set:
            super().train(mode)
            self._mode_set = mode
        return self

    @property
    def config(self):
        return self.clip.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        self.clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.pixel_mean.dtype) / 255.0
        return (x - self.pixel_mean) / self.pixel_std if self.normalize else x

    def pooled_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image tower's pooled output (before the projection: what a feature cache stores) from uint8 images."""
        return self.family.pooled_image(self.clip, self.pixels(pixel_values), self.interpolate_pos_encoding)

    def image_features(self, pixel_values: torch.Tensor | None, pooled: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalized projected image features, from uint8 images or from cached pooled outputs."""
        if pooled is None:
            pooled = self.pooled_image(pixel_values)
        return F.normalize(self.family.project_image(self.clip, pooled), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.family.text_embeds(self.clip, input_ids, attention_mask), dim=-1)

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """``text_features`` over many token rows, ``chunk`` at a time, on the model's device."""
        device = self.pixel_mean.device
        return torch.cat(
            [
                self.text_features(input_ids[i : i + chunk].to(device), attention_mask[i : i + chunk].to(device))
                for i in range(0, len(input_ids), chunk)
            ]
        )

    def logit_scale(self) -> torch.Tensor:
        return self.family.logit_scale(self.clip)

    def logit_bias(self) -> torch.Tensor | None:
        return self.family.logit_bias(self.clip)

    def logit_params(self) -> torch.Tensor:
        """The scale, or ``[scale, bias]`` for a family with a logit bias (what cached contrastive steps carry)."""
        bias = self.logit_bias()
        return self.logit_scale() if bias is None else torch.stack([self.logit_scale().reshape(()), bias])

    def logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The family's pair scores of normalized features: ``scale * cos`` (+ ``bias`` for SigLIP)."""
        logits = self.logit_scale().to(image.dtype) * image @ text.to(image.dtype).t()
        bias = self.logit_bias()
        return logits if bias is None else logits + bias.to(image.dtype)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        features_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        return self.task(
            self,
            pixel_values=pixel_values,
            labels=labels,
            input_ids=input_ids,
            attention_mask=attention_mask,
            pooled=pooled,
            features_only=features_only,
        )
