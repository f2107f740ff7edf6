from peft.tuners.tuners_utils import BaseTuner

from .layer import ClipVptEncoder


class ClipVptModel(BaseTuner):
    """Replaces ``vision_model.encoder`` of a dual encoder (CLIP, SigLIP, ...) with ``ClipVptEncoder``."""

    prefix = "clip_vpt_"
    tuner_layer_cls = ClipVptEncoder
    target_module_mapping = {"clip": ["vision_model.encoder"]}

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        vision = self.model.config.vision_config
        if isinstance(target, ClipVptEncoder):
            target.update_layer(adapter_name, peft_config, vision.patch_size)
            return
        if not hasattr(target, "layers"):
            raise ValueError(f"clip_vpt targets the image tower's encoder; `{current_key}` has no `layers`.")
        new_module = ClipVptEncoder(target, adapter_name, peft_config, vision.patch_size, vision.hidden_size)
        self._replace_module(parent, target_name, new_module, target)
