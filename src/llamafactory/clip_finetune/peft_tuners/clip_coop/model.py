from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .layer import ClipCoopEmbedding


class ClipCoopModel(BaseTuner):
    """Replaces the text tower's token embedding with ``ClipCoopEmbedding``."""

    prefix = "clip_coop_"
    tuner_layer_cls = ClipCoopEmbedding
    target_module_mapping = {"clip": ["text_model.embeddings.token_embedding"]}

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, ClipCoopEmbedding):
            target.update_layer(adapter_name, peft_config.n_ctx, peft_config.n_groups)
            return
        if not isinstance(target, nn.Embedding):
            raise ValueError(
                f"clip_coop targets the text tower's token nn.Embedding; `{current_key}` is {type(target)}."
            )
        new_module = ClipCoopEmbedding(target, adapter_name, peft_config.n_ctx, peft_config.n_groups)
        self._replace_module(parent, target_name, new_module, target)
