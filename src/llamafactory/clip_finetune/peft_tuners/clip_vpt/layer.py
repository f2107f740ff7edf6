import math

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.modeling_outputs import BaseModelOutput


class ClipVptEncoder(nn.Module, BaseTunerLayer):
    """Wraps an image tower's encoder: inserts each active adapter's prompts and runs the original layers.

    The wrapped encoder stays in eval mode (no dropout in the frozen backbone); its layers keep their own gradient
    checkpointing and attention implementation."""

    adapter_layer_names = ("clip_vpt_prompts", "clip_vpt_project")
    other_param_names = ("clip_vpt_deep", "clip_vpt_dropout", "clip_vpt_prefix")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, patch_size: int, hidden_size: int):
        super().__init__()
        self.base_layer = base_layer
        self.hidden_size = hidden_size
        self.clip_vpt_prompts = nn.ParameterDict()
        self.clip_vpt_project = nn.ModuleDict()
        self.clip_vpt_deep: dict[str, bool] = {}
        self.clip_vpt_prefix: dict[str, int] = {}
        self.clip_vpt_dropout = nn.ModuleDict()
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []
        self.update_layer(adapter_name, config, patch_size)

    def update_layer(self, adapter_name: str, config, patch_size: int) -> None:
        layers = len(self.base_layer.layers) if config.prompt_deep else 1
        width = config.prompt_project or self.hidden_size
        # VPT's initialization: uniform in +-sqrt(6 / (3 * patch_h * patch_w + dim)), with the real patch size
        bound = math.sqrt(6.0 / (3 * patch_size * patch_size + width))
        prompts = torch.empty(layers, config.prompt_length, width).uniform_(-bound, bound)
        self.clip_vpt_prompts[adapter_name] = nn.Parameter(prompts)
        if config.prompt_project is not None:
            project = nn.Linear(config.prompt_project, self.hidden_size)
            nn.init.kaiming_normal_(project.weight, a=0, mode="fan_out")
            nn.init.zeros_(project.bias)
            self.clip_vpt_project[adapter_name] = project
        self.clip_vpt_deep[adapter_name] = config.prompt_deep
        self.clip_vpt_prefix[adapter_name] = config.prefix_tokens
        self.clip_vpt_dropout[adapter_name] = nn.Dropout(config.prompt_dropout)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        """Overrides a private PEFT method: PEFT's version reads ``base_layer.weight``, which an encoder (the layer VPT
        wraps) has not, so it would fail; PEFT 0.18 offers no public hook to place a tuner's parameters, so follow the
        encoder's first parameter. Tested against PEFT 0.18.1 (tests/test_methods_peft.py moves a VPT model)."""
        reference = next(self.base_layer.parameters())
        dtype = reference.dtype if reference.dtype.is_floating_point else None
        for container in (self.clip_vpt_prompts, self.clip_vpt_project):
            if adapter_name in container:
                container[adapter_name] = container[adapter_name].to(device or reference.device, dtype=dtype)

    def train(self, mode: bool = True) -> "ClipVptEncoder":
        super().train(mode)
        self.base_layer.eval()
        return self

    def _prompts(self, name: str, layer: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        prompts = self.clip_vpt_prompts[name][layer]
        if name in self.clip_vpt_project:
            prompts = self.clip_vpt_project[name](prompts)
        prompts = self.clip_vpt_dropout[name](prompts.to(like.dtype))
        return prompts.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask=None, **kwargs) -> BaseModelOutput:
        names = [] if self.disable_adapters else [n for n in self.active_adapters if n in self.clip_vpt_prompts]
        if len(names) > 1:
            raise ValueError(f"clip_vpt: one active prompt adapter at a time, got {names}.")
        hidden = inputs_embeds
        name = names[0] if names else None
        batch = hidden.shape[0]
        if name is not None:
            length, prefix = self.clip_vpt_prompts[name].shape[1], self.clip_vpt_prefix[name]
            hidden = torch.cat([hidden[:, :prefix], self._prompts(name, 0, batch, hidden), hidden[:, prefix:]], dim=1)
        for index, layer in enumerate(self.base_layer.layers):
            if name is not None and index > 0 and self.clip_vpt_deep[name]:
                prompts = self._prompts(name, index, batch, hidden)
                hidden = torch.cat([hidden[:, :prefix], prompts, hidden[:, prefix + length :]], dim=1)
            out = layer(hidden, attention_mask, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return BaseModelOutput(last_hidden_state=hidden)
