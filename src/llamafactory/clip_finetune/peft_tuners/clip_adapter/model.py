from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .layer import ClipAdapterLayer


class ClipAdapterModel(BaseTuner):
    """Replaces the targeted projection layers of a ``CLIPModel`` with ``ClipAdapterLayer``."""

    prefix = "clip_adapter_"
    tuner_layer_cls = ClipAdapterLayer
    target_module_mapping = {"clip": ["visual_projection"]}

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, ClipAdapterLayer):
            target.update_layer(adapter_name, peft_config.reduction, peft_config.ratio)
            return
        if not isinstance(target, nn.Linear):
            raise ValueError(f"clip_adapter targets projection Linear layers; `{current_key}` is {type(target)}.")
        new_module = ClipAdapterLayer(target, adapter_name, peft_config.reduction, peft_config.ratio)
        self._replace_module(parent, target_name, new_module, target)
