"""Image classification: cosine logits against class-prompt text features, cross-entropy, top-1/top-5 (ties count
as a random order: see ``ranking``)."""

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.overlap import describe
from .base import HeadScores, Task
from .contrastive import contrastive_loss
from .ranking import topk_hits


def per_class_recall(hits: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """The mean over the classes present of the share of their images classified correctly (``hits``: each image's
    top-1 credit)."""
    counts = torch.bincount(labels, minlength=classes).double()
    sums = torch.zeros(classes, dtype=torch.float64, device=hits.device).index_add_(0, labels, hits.double())
    present = counts > 0
    return (sums[present] / counts[present]).mean().item()


def ensemble(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` classes' prompt ensembles from their prompts' tokens (class-major): each prompt's feature normalized
    inside ``encode_texts``, averaged per class, normalized."""
    feats = model.encode_texts(ids, mask)
    return F.normalize(feats.view(count, len(ids) // count, -1).mean(dim=1), dim=-1)


class ClassificationTask(Task):
    """Class text features are the prompt ensemble: normalize each template's feature, average, normalize.

    With a frozen text tower they are computed once (``setup``); otherwise every step, with gradients.
    """

    name: ClassVar[str] = "classification"
    main_metric: ClassVar[str] = "accuracy"
    has_classes: ClassVar[bool] = True
    text_frozen_by_default: ClassVar[bool] = True

    def __init__(
        self,
        classnames: list[str],
        templates: list[str],
        tokenizer: Any,
        text_trainable: bool,
        loss: str = "cross_entropy",
        anchor_weight: float = 0.0,
    ):
        super().__init__()
        self.loss = loss
        self.classnames = classnames
        self.templates = templates
        self.text_trainable = text_trainable
        self.anchor_weight = anchor_weight
        # a model.families.TextTokenizer: the family's case and padding rules, and a CoOp context's slots
        prompts, classes = tokenizer.class_prompts(classnames, templates)
        self.per_class = len(prompts) // len(classnames)
        tokens = tokenizer(prompts, classes=classes)
        self.register_buffer("prompt_ids", tokens["input_ids"], persistent=False)
        self.register_buffer("prompt_mask", tokens["attention_mask"], persistent=False)
        self.register_buffer("class_features", torch.empty(0), persistent=False)
        if anchor_weight:  # KgCoOp: the hand-crafted prompts, without a learned context
            plain = replace(tokenizer, context=None)
            anchor = plain(plain.class_prompts(classnames, templates)[0])
            self.register_buffer("anchor_ids", anchor["input_ids"], persistent=False)
            self.register_buffer("anchor_mask", anchor["attention_mask"], persistent=False)
            self.register_buffer("anchor_features", torch.empty(0), persistent=False)

    @classmethod
    def check(cls, data_args: Any, finetuning_args: Any) -> None:
        """The negatives of classification are the class texts: the contrastive batch keys do not apply."""
        super().check(data_args, finetuning_args)
        if finetuning_args.contrastive_accumulation_steps != 1 or finetuning_args.contrastive_negatives != "global":
            raise ValueError(
                "contrastive_negatives / contrastive_accumulation_steps apply to image_to_text (classification scores "
                "every image against all class texts); remove them."
            )

    @classmethod
    def build(cls, datasets: Any, tokenizer: Any, clip: nn.Module, finetuning_args: Any) -> "ClassificationTask":
        text_trainable = any(p.requires_grad for n, p in clip.named_parameters() if "text_" in n)
        return cls(
            datasets.classnames,
            datasets.templates,
            tokenizer,
            text_trainable,
            finetuning_args.classification_loss,
            finetuning_args.coop_kg_weight,
        )

    def encode_classes(self, model: nn.Module, classes: torch.Tensor | None = None) -> torch.Tensor:
        """The prompt ensemble of every class (or of ``classes``): each template's feature normalized inside
        ``encode_texts``, averaged, normalized."""
        ids, mask, count = self.prompt_ids, self.prompt_mask, len(self.classnames)
        if classes is not None:
            rows = classes[:, None] * self.per_class + torch.arange(self.per_class, device=ids.device)
            ids, mask, count = ids[rows.flatten()], mask[rows.flatten()], len(classes)
        return ensemble(model, ids, mask, count)

    @torch.no_grad()
    def setup(self, model: nn.Module) -> None:
        if not (self.anchor_weight or not self.text_trainable):
            return
        was_training = model.training
        model.eval()
        if self.anchor_weight:
            self.anchor_features = ensemble(model, self.anchor_ids, self.anchor_mask, len(self.classnames)).float()
        if not self.text_trainable:
            self.class_features = self.encode_classes(model).float()
        model.train(was_training)

    def class_weights(self, model: nn.Module) -> torch.Tensor:
        return self.encode_classes(model) if self.text_trainable else self.class_features

    @staticmethod
    def logits(model: nn.Module, image: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The family's scores against the class features, plus a head's (Tip-Adapter's cache); a head that
        ``replaces_logits`` (a linear probe) is the classifier alone."""
        head = model.head
        if head is not None and getattr(head, "replaces_logits", False):
            return head(image)
        logits = model.logits(image, weights)
        return logits if head is None else logits + head(image)

    def forward(
        self, model: nn.Module, pixel_values: torch.Tensor, labels=None, pooled=None, **_: Any
    ) -> dict[str, torch.Tensor]:
        image = model.image_features(pixel_values, pooled)
        if self.loss == "contrastive_prompts" and labels is not None:
            return self.prompt_contrastive(model, image, labels)
        weights = self.class_weights(model)
        logits = self.logits(model, image, weights)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = (
                self.sigmoid_loss(logits, labels)
                if self.loss == "sigmoid"
                else F.cross_entropy(logits.float(), labels)
            )
            if self.anchor_weight:  # KgCoOp: 1 - mean cosine of the class features to the hand-crafted prompts'
                kept = F.cosine_similarity(weights.float(), self.anchor_features, dim=-1, eps=1e-7).mean()
                out["loss"] = out["loss"] + self.anchor_weight * (1.0 - kept)
        return out

    @staticmethod
    def sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One-vs-rest form of SigLIP's pretraining loss: each (image, class) pair is a binary problem on the
        family's logits (scale * cos + bias), summed over the classes and averaged over the images."""
        signs = 2 * F.one_hot(labels, logits.shape[1]).float() - 1
        return -F.logsigmoid(signs * logits.float()).sum(dim=1).mean()

    def prompt_contrastive(self, model: nn.Module, image: torch.Tensor, labels: torch.Tensor) -> dict:
        """FLYP (Goyal et al., CVPR 2023): symmetric InfoNCE between each image and its class prompt's feature, the
        batch's other pairs as negatives; images of one class share one prompt, as in the reference, whose captions
        of one class are the same text. Only the batch's classes are encoded."""
        if self.text_trainable:
            classes, inverse = labels.unique(return_inverse=True)
            text = self.encode_classes(model, classes)[inverse]
        else:
            text = self.class_features[labels]
        loss, logits = contrastive_loss(image, text, model.logit_scale(), bias=model.logit_bias())
        return {"loss": loss, "logits": logits}

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], gather: Callable, dataset
    ) -> dict:
        return self.scan(model, batches, gather)[1]

    @torch.no_grad()
    def scan(self, model: nn.Module, batches: Iterable[dict], gather: Callable, top_k: int | None = None):
        """One pass over the batches: the tie-aware top-1/top-5 hits as metrics (accuracy, top-5 accuracy, and the
        mean over classes of each class's top-1 recall, as CLIP_benchmark's ``mean_per_class_recall``) and, with
        ``top_k``, each image's ``top_k`` class probabilities (softmax of the logits) and label, gathered across
        ranks."""
        if self.text_trainable:
            self.class_features = self.encode_classes(model).float()
        parts: list[tuple] = []
        for batch in batches:
            logits = self.logits(model, model.image_features(batch["pixel_values"]).float(), self.class_features)
            found = (*topk_hits(logits, batch["labels"], (1, 5)).values(), batch["labels"])
            if top_k is not None:
                top = logits.float().softmax(-1).topk(min(top_k, len(self.classnames)), dim=-1)
                found += (top.values, top.indices)
            parts.append(gather(found))
        top1, top5, labels, *rest = (torch.cat(column) for column in zip(*parts, strict=True))
        metrics = {
            "accuracy": top1.mean().item(),
            "top5_accuracy": top5.mean().item(),
            "mean_per_class_recall": per_class_recall(top1, labels, len(self.classnames)),
        }
        return [*rest, labels], metrics

    def head_values(self, model: nn.Module, train: Any) -> torch.Tensor:
        """One-hot labels: a head's cached keys vote for their images' classes."""
        return F.one_hot(train.labels, len(self.classnames)).float()

    def head_scores(
        self, model: nn.Module, features: torch.Tensor, labels: torch.Tensor | None, dataset: Any, values: torch.Tensor
    ) -> HeadScores:
        """Columns are the classes; each image's true column is its label (the objective: accuracy)."""
        base = model.logits(features.float(), self.class_features).float()
        return HeadScores(base, values, torch.arange(len(labels), device=labels.device), labels)

    def predict(
        self, model: nn.Module, batches: Iterable[dict], gather: Callable, dataset: Any, top_k: int
    ) -> tuple[list, dict]:
        """Each image's ``top_k`` classes with their probabilities (a head included) and its label; and the
        accuracy of the same pass."""
        columns, metrics = self.scan(model, batches, gather, top_k)
        scores, indices, labels = (column.tolist() for column in columns)
        rows = [
            {
                "image": describe(dataset.samples.images[n]),
                "label": self.classnames[labels[n]],
                "top_k": [
                    {"class": self.classnames[c], "score": s} for c, s in zip(indices[n], scores[n], strict=True)
                ],
            }
            for n in range(len(labels))
        ]
        return rows, metrics
