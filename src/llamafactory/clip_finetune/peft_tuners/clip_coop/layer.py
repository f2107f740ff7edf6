import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn


class ClipCoopEmbedding(nn.Module, BaseTunerLayer):
    """Wraps the text tower's token ``nn.Embedding``: slot ids (negative) get the active adapter's context vectors."""

    adapter_layer_names = ("clip_coop_ctx",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Embedding, adapter_name: str, n_ctx: int, n_groups: int):
        super().__init__()
        self.base_layer = base_layer
        self.clip_coop_ctx = nn.ParameterDict()
        self._active_adapter = adapter_name
        self._disable_adapters = False
        self.merged_adapters = []
        self.update_layer(adapter_name, n_ctx, n_groups)

    def update_layer(self, adapter_name: str, n_ctx: int, n_groups: int) -> None:
        # CoOp's random initialization: N(0, 0.02^2) (a phrase initialization is copied in by the method)
        ctx = torch.empty(n_groups, n_ctx, self.base_layer.embedding_dim).normal_(std=0.02)
        self.clip_coop_ctx[adapter_name] = nn.Parameter(ctx.to(self.base_layer.weight))
        self.set_adapter(self.active_adapters)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Every position gathers a row of the context and keeps it where its id is a slot: no shape depends on the
        data, so ``torch.compile`` traces it whole. The range check runs eagerly (a context of another size)."""
        slots = input_ids < 0
        embeds = self.base_layer(input_ids.clamp(min=0))
        names = [] if self.disable_adapters else [n for n in self.active_adapters if n in self.clip_coop_ctx]
        if len(names) != 1:
            if slots.any():
                raise ValueError(f"clip_coop: prompt slots need exactly one active context, got {names}.")
            return embeds
        ctx = self.clip_coop_ctx[names[0]]
        flat = ctx.reshape(-1, ctx.shape[-1])
        if not torch.compiler.is_compiling():
            top = int((-input_ids).max()) - 1  # the largest slot index (negative: no slot)
            if top >= flat.shape[0]:
                raise ValueError(f"clip_coop: slot {top} beyond the {ctx.shape[0]} x {ctx.shape[1]} context.")
        rows = flat[(-input_ids - 1).clamp(0, flat.shape[0] - 1)].to(embeds.dtype)
        return torch.where(slots.unsqueeze(-1), rows, embeds)
