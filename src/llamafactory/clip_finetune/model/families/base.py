"""What every dual-encoder family answers: where its towers are, how it pools and projects, how it scores a pair.

The reference behaviour is OpenAI CLIP's (``CLIPModel``); a family overrides only what differs. The rest of the stage
asks the family and never reads a model's internals itself."""

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn


class Family:
    """CLIP-like: pooled tower outputs, linear projections, softmax InfoNCE at ``exp(logit_scale)`` (at most 100)."""

    name: ClassVar[str] = "clip"
    model_types: ClassVar[tuple[str, ...]] = ("clip",)
    model_class_name: ClassVar[str] = "CLIPModel"
    loss: ClassVar[str] = "softmax"  # the pretraining loss: softmax InfoNCE, or "sigmoid" (pairwise, with a bias)
    prefix_tokens: ClassVar[int] = 1  # tokens before the patches (the class token); VPT's prompts go after them
    text_padding: ClassVar[int | None] = None  # pad every text to this many tokens (else to the longest)
    lower_case: ClassVar[bool] = False  # lower-case texts before tokenizing
    # CLIP's module names (what lora_target, abs_group_name and bias_terms say) -> this family's names for them
    aliases: ClassVar[dict[str, tuple[str, ...]]] = {}
    token_embedding: ClassVar[str] = "text_model.embeddings.token_embedding"  # where CoOp's context vectors go
    # the modules CLIP-Adapter wraps: their output is the feature the adapter adds its residual to
    adapter_targets: ClassVar[dict[str, list[str]]] = {"vision": ["visual_projection"], "text": ["text_projection"]}

    @classmethod
    def model_class(cls) -> type:
        import transformers

        return getattr(transformers, cls.model_class_name)

    # towers
    @staticmethod
    def image_modules(clip: nn.Module) -> list[nn.Module]:
        return [clip.vision_model, clip.visual_projection]

    @staticmethod
    def text_modules(clip: nn.Module) -> list[nn.Module]:
        return [clip.text_model, clip.text_projection]

    @staticmethod
    def logit_parameters(clip: nn.Module) -> list[nn.Parameter]:
        return [clip.logit_scale]

    # features
    @staticmethod
    def pooled_width(clip: nn.Module) -> int:
        """The width of ``pooled_image``'s output (what the feature cache stores)."""
        return clip.vision_model.config.hidden_size

    @staticmethod
    def feature_width(clip: nn.Module) -> int:
        """The width of the image and text features (what scores compare)."""
        return clip.config.projection_dim

    @staticmethod
    def pooled_image(clip: nn.Module, pixels: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        """The part of the image path a feature cache may store: everything before the projection."""
        return clip.vision_model(pixel_values=pixels, interpolate_pos_encoding=interpolate_pos_encoding).pooler_output

    @staticmethod
    def project_image(clip: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        return clip.visual_projection(pooled)

    @staticmethod
    def pooled_frozen(clip: nn.Module) -> bool:
        """Whether ``pooled_image`` has nothing to train (so its outputs can be cached)."""
        return not any(p.requires_grad for p in clip.vision_model.parameters())

    @staticmethod
    def text_embeds(clip: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return clip.text_projection(pooled)

    @staticmethod
    def logit_scale(clip: nn.Module) -> torch.Tensor:
        return clip.logit_scale.exp().clamp(max=100)

    @staticmethod
    def logit_bias(clip: nn.Module) -> torch.Tensor | None:
        return None

    @classmethod
    def names(cls, canonical: str) -> tuple[str, ...]:
        """A CLIP module name and this family's names for the same module."""
        return (canonical, *cls.aliases.get(canonical, ()))


def _ids_and_mask(tokens: Any) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of a tokenizer's output; a tokenizer that returns no mask (SigLIP's) attends to
    every position."""
    mask = tokens.get("attention_mask")
    return {
        "input_ids": tokens["input_ids"],
        "attention_mask": torch.ones_like(tokens["input_ids"]) if mask is None else mask,
    }


@dataclass(frozen=True)
class PromptContext:
    """Slots for learned context vectors (CoOp) in every class prompt: ``n_ctx`` slots, the class name after them
    (``end``), between their halves (``middle``) or before them (``front``); one context, or one per class."""

    n_ctx: int
    position: str = "end"
    class_specific: bool = False

    def slots(self, group: int) -> list[int]:
        """Slot ids (negative: no token has them) of context ``group``, as ``peft_tuners.clip_coop`` reads them."""
        return [-(1 + group * self.n_ctx + k) for k in range(self.n_ctx)]


@dataclass(frozen=True)
class TextTokenizer:
    """A checkpoint's tokenizer under its family's rules: SigLIP's texts are lower-cased and padded to 64 tokens, as
    they were in pretraining (accuracy collapses otherwise); CLIP's are padded to the longest in the batch. With a
    ``context`` (CoOp), class prompts are ``"{class}."`` with the context's slots around the name."""

    tokenizer: Any
    family: type[Family] = Family
    context: PromptContext | None = None

    def class_prompts(self, classnames: list[str], templates: list[str]) -> tuple[list[str], list[int]]:
        """The prompts of every class (class-major) and each prompt's class: the templates' ensemble, or CoOp's one
        prompt per class whose context replaces the templates."""
        if self.context is not None:
            return [f"{name}." for name in classnames], list(range(len(classnames)))
        prompts = [template.format(name) for name in classnames for template in templates]
        return prompts, [c for c in range(len(classnames)) for _ in templates]

    def __call__(
        self, texts: list[str], max_length: int | None = None, classes: list[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask of ``texts``, truncated to ``max_length`` (and the family's length);
        ``classes``: each text's class (a class-specific context needs them)."""
        family = self.family
        if family.lower_case:
            texts = [t.lower() for t in texts]
        if self.context is not None:
            return self._with_context(texts, max_length, classes)
        if family.text_padding is not None:
            length = min(max_length or family.text_padding, family.text_padding)
            tokens = self.tokenizer(
                texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            )
        else:
            tokens = self.tokenizer(
                texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
            )
        return _ids_and_mask(tokens)

    def _with_context(self, texts: list[str], max_length: int | None, classes: list[int] | None) -> dict:
        ctx, tok = self.context, self.tokenizer
        if ctx.class_specific and classes is None:
            raise ValueError(
                "A class-specific CoOp context scores class prompts only: no class given for these texts."
            )
        probe, bare = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
        start = probe.index(bare[0])
        prefix, suffix = probe[:start], probe[start + len(bare) :]
        length = min(max_length or tok.model_max_length, tok.model_max_length, self.family.text_padding or 10**6)
        rows = []
        for i, text in enumerate(texts):
            slots = ctx.slots(classes[i] if ctx.class_specific else 0)
            # the name tokenized as it reads in the prompt: after a word (a leading space: Gemma's SentencePiece adds
            # none itself) unless it opens the prompt, with its period when the period follows it (end); CoOp's
            # middle and front prompts end with the context, and the period is tokenized as following a word
            if ctx.position == "end":
                body = slots + tok(" " + text, add_special_tokens=False)["input_ids"]
            else:
                name, end = (text[:-1], text[-1:]) if text.endswith(".") else (text, "")
                lead, half = ("" if ctx.position == "front" else " "), ctx.n_ctx // 2
                name_ids = tok(lead + name, add_special_tokens=False)["input_ids"]
                end_ids = self._continuation(end) if end else []
                front = ctx.position == "front"
                body = (name_ids + slots if front else slots[:half] + name_ids + slots[half:]) + end_ids
            rows.append(prefix + body[: length - len(prefix) - len(suffix)] + suffix)
        padding = "max_length" if self.family.text_padding is not None else "longest"
        return _ids_and_mask(tok.pad({"input_ids": rows}, padding=padding, max_length=length, return_tensors="pt"))

    def _continuation(self, piece: str) -> list[int]:
        """The tokens of ``piece`` right after a word (a period after the context), not as a text of its own (which
        a SentencePiece tokenizer would open with a word-start piece)."""
        tok = self.tokenizer
        word = tok("a", add_special_tokens=False)["input_ids"]
        joined = tok("a" + piece, add_special_tokens=False)["input_ids"]
        return (
            joined[len(word) :] if joined[: len(word)] == word else tok(piece, add_special_tokens=False)["input_ids"]
        )

    def for_model(self, clip: nn.Module) -> "TextTokenizer":
        """This tokenizer with the slots of the model's CoOp context, if it has one (trained now or reloaded)."""
        config = next(
            (c for c in (getattr(clip, "peft_config", None) or {}).values() if c.peft_type == "CLIP_COOP"), None
        )
        if config is None:
            return replace(self, context=None)
        context = PromptContext(config.n_ctx, config.class_token_position, config.n_groups > 1)
        return replace(self, context=context)

    def count(self, text: str) -> int:
        """Tokens in one text (with special tokens, no padding)."""
        return len(self.tokenizer(text.lower() if self.family.lower_case else text)["input_ids"])


class MetaClip2Family(Family):
    """MetaCLIP 2 (worldwide): CLIP's architecture, an XLM-R tokenizer; the text tower pools at the first EOS token
    (``eos_token_id`` in its config), which its own text model does."""

    name = "metaclip_2"
    model_types = ("metaclip_2",)
    model_class_name = "MetaClip2Model"
