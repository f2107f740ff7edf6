from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .layer import ClipAdapterLayer


class ClipAdapterModel(BaseTuner):
    """Replaces the targeted modules (a ``CLIPModel``'s projections, a ``SiglipModel``'s pooling heads) with
    ``ClipAdapterLayer``."""

    prefix = "clip_adapter_"
    tuner_layer_cls = ClipAdapterLayer
    target_module_mapping = {"clip": ["visual_projection"]}

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, ClipAdapterLayer):
            target.update_layer(adapter_name, peft_config.reduction, peft_config.ratio)
            return
        # the feature's width: a Linear's output, else the output of the module's last Linear (SigLIP's head MLP)
        linears = (
            [target] if isinstance(target, nn.Linear) else [m for m in target.modules() if isinstance(m, nn.Linear)]
        )
        if not linears:
            raise ValueError(f"clip_adapter targets a tower's feature layer; `{current_key}` has no Linear output.")
        width = linears[-1].out_features
        new_module = ClipAdapterLayer(target, adapter_name, peft_config.reduction, peft_config.ratio, width)
        self._replace_module(parent, target_name, new_module, target)
