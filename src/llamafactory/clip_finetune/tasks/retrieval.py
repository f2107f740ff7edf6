"""Image-to-text retrieval: symmetric InfoNCE on image-caption batches, Recall@1/5/10 both ways."""

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.overlap import describe
from .base import CaptionSet, HeadScores, Task
from .contrastive import contrastive_loss
from .ranking import hit_probability, ranks_against


if TYPE_CHECKING:
    from ..hparams import ClipDataArguments, ClipFinetuningArguments


RECALL_AT = (1, 5, 10)


def recall_at_k(sims: torch.Tensor, caption_image: torch.Tensor, chunk: int = 1024) -> dict[str, float]:
    """Standard retrieval recall from an [images, captions] similarity matrix.

    Image->text: a query image is a hit at K if any of its captions ranks in the top K.
    Text->image: a caption is a hit at K if its image ranks in the top K. Scores are used as they are; ties with
    wrong entries count as a random order (``ranking.hit_probability``), so a constant model scores chance.
    """
    n_images, n_captions = sims.shape
    owner = caption_image.to(sims.device)
    i2t = {k: [] for k in RECALL_AT}
    t2i = {k: [] for k in RECALL_AT}
    for start in range(0, n_images, chunk):
        block = sims[start : start + chunk]
        mine = owner[None, :] == torch.arange(start, start + len(block), device=sims.device)[:, None]
        best = block.masked_fill(~mine, float("-inf")).max(dim=1, keepdim=True).values
        ahead, tied = ranks_against(block, best, ~mine)
        own = ((block == best) & mine).sum(-1).clamp(min=1)
        for k in RECALL_AT:
            i2t[k].append(hit_probability(ahead, tied, own, k))
    for start in range(0, n_captions, chunk):
        block = sims[:, start : start + chunk].t()
        index = owner[start : start + chunk, None]
        wrong = torch.ones_like(block, dtype=torch.bool).scatter_(1, index, False)
        ahead, tied = ranks_against(block, block.gather(1, index), wrong)
        for k in RECALL_AT:
            t2i[k].append(hit_probability(ahead, tied, 1, k))
    metrics = {f"i2t_r{k}": torch.cat(v).mean().item() for k, v in i2t.items()}
    metrics.update({f"t2i_r{k}": torch.cat(v).mean().item() for k, v in t2i.items()})
    return metrics


class ImageToTextTask(Task):
    name: ClassVar[str] = "image_to_text"
    main_metric: ClassVar[str] = "i2t_r1"
    has_classes: ClassVar[bool] = False
    text_frozen_by_default: ClassVar[bool] = False

    @classmethod
    def check(cls, data_args: "ClipDataArguments", finetuning_args: "ClipFinetuningArguments") -> None:
        super().check(data_args, finetuning_args)
        if data_args.num_shots is not None:
            raise ValueError("num_shots applies to classification (K images per class); remove it for image_to_text.")
        if data_args.subsample_classes != "all":
            raise ValueError("subsample_classes applies to classification.")
        if finetuning_args.classification_loss != "cross_entropy":
            raise ValueError("classification_loss applies to classification; image_to_text is contrastive already.")
        steps = finetuning_args.contrastive_accumulation_steps
        if steps < 1:
            raise ValueError(f"contrastive_accumulation_steps must be at least 1, got {steps}.")

    @classmethod
    def build(cls, datasets: Any, tokenizer: Any, clip: nn.Module, finetuning_args: Any) -> "ImageToTextTask":
        return cls(finetuning_args.contrastive_negatives)

    def __init__(self, negatives: str = "global"):
        super().__init__()
        self.negatives = negatives

    def forward(
        self,
        model: nn.Module,
        pixel_values: torch.Tensor,
        input_ids=None,
        attention_mask=None,
        pooled=None,
        features_only: bool = False,
        **_: Any,
    ):
        """The family's contrastive loss over the batch's pairs (InfoNCE, or SigLIP's sigmoid loss; with every rank's
        pairs as negatives unless ``local``); ``features_only``: the features and logit parameters that loss takes
        (cached steps)."""
        image = self.query(model, model.image_features(pixel_values, pooled))
        if input_ids is None:
            return {"logits": image}
        text = model.text_features(input_ids, attention_mask)
        if features_only:
            return {"image": image, "text": text, "scale": model.logit_params()}
        loss, logits = contrastive_loss(image, text, model.logit_scale(), self.negatives, model.logit_bias())
        return {"loss": loss, "logits": logits}

    def loss_from_features(self, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The training loss of features computed earlier (``contrastive.cached_step``); ``scale`` is
        ``logit_params()``: the scale, or the scale and bias."""
        bias = scale[1] if scale.dim() == 1 and len(scale) == 2 else None
        return contrastive_loss(image, text, scale[0] if bias is not None else scale, self.negatives, bias)[0]

    @staticmethod
    def query(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """With a head (Tip-Adapter's cache), the query moves toward the caption features of similar training
        images: normalize(f + alpha * A V_text)."""
        return image if model.head is None else F.normalize(image + model.head(image), dim=-1)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], gather: Callable, dataset
    ) -> dict:
        return recall_at_k(self.similarities(model, batches, gather, dataset), dataset.caption_image)

    @staticmethod
    def similarities(model: nn.Module, batches: Iterable[dict], gather: Callable, dataset: Any) -> torch.Tensor:
        """[images, captions] cosine similarities of the dataset's images (a head included) and all its captions."""
        images = torch.cat(
            [gather(ImageToTextTask.query(model, model.image_features(b["pixel_values"]).float())) for b in batches]
        )
        return images @ model.encode_texts(dataset.input_ids, dataset.attention_mask).float().t()

    @torch.no_grad()
    def head_values(self, model: nn.Module, train: CaptionSet) -> torch.Tensor:
        """Each image's mean caption feature (frozen text tower), normalized."""
        texts = model.encode_texts(train.input_ids, train.attention_mask).float()
        owner = train.caption_image.to(texts.device)
        summed = torch.zeros(len(train), texts.shape[1], device=texts.device).index_add_(0, owner, texts)
        return F.normalize(summed, dim=-1)

    @torch.no_grad()
    def head_scores(
        self, model: nn.Module, features: torch.Tensor, labels: torch.Tensor | None, dataset: Any, values: torch.Tensor
    ) -> HeadScores:
        """Columns are the captions; an image's true columns are its own captions (the objective: i2t Recall@1).
        The query f + alpha A V is normalized before scoring, which does not change an image's ranking."""
        texts = model.encode_texts(dataset.input_ids, dataset.attention_mask).float()
        owner = dataset.caption_image.to(features.device)
        return HeadScores(
            features @ texts.t(), values @ texts.t(), owner, torch.arange(len(owner), device=owner.device)
        )

    @torch.no_grad()
    def predict(
        self, model: nn.Module, batches: Iterable[dict], gather: Callable, dataset: Any, top_k: int
    ) -> tuple[list, dict]:
        """Each image's ``top_k`` captions and each caption's ``top_k`` images, by cosine similarity (a head
        included), with the captions each image has; and the Recall@K of the same similarities."""
        sims = self.similarities(model, batches, gather, dataset)
        captions = [caption for own in dataset.samples.captions for caption in own]
        names = [describe(image) for image in dataset.samples.images]
        by_image = sims.topk(min(top_k, sims.shape[1]), dim=1)
        by_caption = sims.t().topk(min(top_k, sims.shape[0]), dim=1)
        rows = [
            {
                "query": "image",
                "image": names[i],
                "captions": dataset.samples.captions[i],
                "top_k": [{"caption": captions[j], "score": s} for j, s in zip(idx, val, strict=True)],
            }
            for i, (idx, val) in enumerate(zip(by_image.indices.tolist(), by_image.values.tolist(), strict=True))
        ]
        owner = dataset.caption_image.tolist()
        rows += [
            {
                "query": "caption",
                "caption": captions[j],
                "image": names[owner[j]],
                "top_k": [{"image": names[i], "score": s} for i, s in zip(idx, val, strict=True)],
            }
            for j, (idx, val) in enumerate(zip(by_caption.indices.tolist(), by_caption.values.tolist(), strict=True))
        ]
        return rows, recall_at_k(sims, dataset.caption_image)
