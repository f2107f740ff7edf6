import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


class ClipAdapterLayer(nn.Module, BaseTunerLayer):
    """Wraps the module whose output is a tower's feature (CLIP's projection ``nn.Linear``, SigLIP's pooling head);
    each adapter adds its residual bottleneck on that feature."""

    # one ModuleDict per Linear, so that saved keys read `<layer>.<adapter name>.weight` as PEFT expects
    adapter_layer_names = ("clip_adapter_down", "clip_adapter_up")
    other_param_names = ("clip_adapter_ratio",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, reduction: int, ratio: float, width: int):
        super().__init__()
        self.base_layer = base_layer
        self.width = width
        self.clip_adapter_down = nn.ModuleDict()
        self.clip_adapter_up = nn.ModuleDict()
        self.clip_adapter_ratio: dict[str, float] = {}
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []
        self.update_layer(adapter_name, reduction, ratio)

    def update_layer(self, adapter_name: str, reduction: int, ratio: float) -> None:
        width = self.width
        if width // reduction < 1:
            raise ValueError(f"clip_adapter: reduction {reduction} leaves no bottleneck for width {width}.")
        self.clip_adapter_down[adapter_name] = nn.Linear(width, width // reduction, bias=False)
        self.clip_adapter_up[adapter_name] = nn.Linear(width // reduction, width, bias=False)
        self.clip_adapter_ratio[adapter_name] = ratio
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.adapt(self.base_layer(*args, **kwargs))

    def adapt(self, feature: torch.Tensor) -> torch.Tensor:
        """The active adapters on the wrapped module's output (a cached feature goes straight here)."""
        if self.disable_adapters:
            return feature
        for name in self.active_adapters:
            if name in self.clip_adapter_down:
                down, up, ratio = (
                    self.clip_adapter_down[name],
                    self.clip_adapter_up[name],
                    self.clip_adapter_ratio[name],
                )
                adapted = torch.relu(up(torch.relu(down(feature.to(down.weight.dtype))))).to(feature.dtype)
                feature = ratio * adapted + (1 - ratio) * feature
        return feature
