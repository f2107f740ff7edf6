"""What every task provides. A method never asks which task runs: it calls these.

A task owns its data contract (what a batch holds), its loss and metrics, the metric that ranks runs
(``main_metric``: plots, searches, model selection), its argument checks, and how a head on the image features
(Tip-Adapter's cache) is valued and scored, so a method that installs such a head works on every task.
"""

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import torch
from torch import nn


if TYPE_CHECKING:
    from ..data import ClipDatasets
    from ..hparams import ClipDataArguments, ClipFinetuningArguments


class TrainingSet(Protocol):
    """What training relies on in a dataset (``data.datasets`` implements it): items, the epoch that seeds their
    augmentation, and the targets of an item or a batch, drawn without the image (cached features reuse them)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, epoch: int | None = None) -> dict[str, Any]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def targets(self, index: int) -> dict[str, Any]: ...

    def batch_targets(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, Any]: ...

    def generator(self, indices: torch.Tensor, device: torch.device) -> torch.Generator: ...


class CaptionSet(Protocol):
    """A captioned dataset: every caption's tokens and the image it belongs to."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    caption_image: torch.Tensor


class HeadScores(NamedTuple):
    """A head search's problem: ``base`` [queries, columns] scores without the head, ``values`` [keys, columns] each
    cached value scored against the columns, and the true (query, column) pairs ``rows``, ``cols``. The score of
    column c for query q with the head is ``base[q, c] + alpha * (exp(-beta (1 - affinity[q])) @ values)[c]``."""

    base: torch.Tensor
    values: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


class Task(nn.Module):
    name: ClassVar[str]
    main_metric: ClassVar[str]  # without the eval_ prefix
    has_classes: ClassVar[bool]  # items have class labels (few-shot sampling, class-keyed caches)
    text_frozen_by_default: ClassVar[bool]

    @classmethod
    def check(cls, data_args: "ClipDataArguments", finetuning_args: "ClipFinetuningArguments") -> None:
        """Argument checks and defaults that depend on the task (run while parsing, before anything loads)."""
        if finetuning_args.freeze_text_tower is None:
            finetuning_args.freeze_text_tower = cls.text_frozen_by_default

    @classmethod
    def build(
        cls, datasets: "ClipDatasets", tokenizer: Any, clip: nn.Module, finetuning_args: "ClipFinetuningArguments"
    ) -> "Task":
        raise NotImplementedError

    def setup(self, model: nn.Module) -> None:
        """Work done once before training and evaluation (e.g. frozen class features)."""

    def evaluate(self, model: nn.Module, batches: Iterable[dict], gather: Callable, dataset: Any) -> dict[str, float]:
        raise NotImplementedError

    def predict(
        self, model: nn.Module, batches: Iterable[dict], gather: Callable, dataset: Any, top_k: int
    ) -> tuple[list, dict[str, float]]:
        """One JSON-ready row per query (``do_predict``: output_dir/predictions.jsonl), in dataset order, and the
        ``evaluate`` metrics of the same pass."""
        raise NotImplementedError

    def head_values(self, model: nn.Module, train: Any) -> torch.Tensor:
        """[images, dim] the value a head caches for each training image."""
        raise NotImplementedError

    def head_scores(
        self, model: nn.Module, features: torch.Tensor, labels: torch.Tensor | None, dataset: Any, values: torch.Tensor
    ) -> HeadScores:
        """The search problem of a head with ``values`` on validation ``features`` (and ``labels``)."""
        raise NotImplementedError
