"""Chinese-CLIP: a BERT text tower (WordPiece, token types) whose feature is the first ([CLS]) token, projected."""

import torch
from torch import nn

from .base import Family


BERT_NAMES = {
    "q_proj": ("attention.self.query",),
    "k_proj": ("attention.self.key",),
    "v_proj": ("attention.self.value",),
    "out_proj": ("attention.output.dense",),
    "fc1": ("intermediate.dense",),
}  # fc2 (BERT's `output.dense`) has no alias: that name is also the end of `attention.output.dense`


class ChineseClipFamily(Family):
    name = "chinese_clip"
    model_types = ("chinese_clip",)
    model_class_name = "ChineseCLIPModel"
    aliases = BERT_NAMES
    token_embedding = "text_model.embeddings.word_embeddings"

    @staticmethod
    def text_embeds(clip: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """As ``ChineseCLIPModel.get_text_features``: the [CLS] state, projected. Token types are all zero for one
        sentence, which is what the model uses when none are given."""
        hidden = clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return clip.text_projection(hidden[:, 0, :])
