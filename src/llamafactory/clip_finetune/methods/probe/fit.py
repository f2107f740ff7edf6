"""Fitting a run's probe head from the frozen image tower's features (``linear_probe``, and LP-FT's first stage)."""

import os
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from llamafactory.extras import logging
from transformers import TrainerCallback

from ...hparams.finetuning_args import is_set
from ..feature_cache import cache_device, check_disjoint, eval_features, project_views, shared_views
from .head import SAME_DIR, LinearHead, load_head, save_head
from .solvers import accuracy, fit_logistic, fit_logistic_searched, fit_lpp


if TYPE_CHECKING:
    from ..base import Run


logger = logging.get_logger(__name__)

PROBE_KEYS = ("probe_type", "probe_c", "probe_search_steps", "probe_epochs", "probe_views")


def check_probe_args(args: tuple, task: Any, method: Any) -> None:
    """``probe_*`` keys are read by ``linear_probe`` and by ``lp_ft``; refused elsewhere, checked where read."""
    _, data_args, training_args, f = args
    probe = method.name == "linear_probe"
    if f.lp_ft:
        if not method.weight_delta:
            raise ValueError(
                f"lp_ft finetunes existing weights from a fitted head: use it with full, bias, lora or clip_lora, "
                f"not {method.name}."
            )
        if f.wise_ft_alphas:
            raise ValueError(
                "lp_ft trains a head the zero-shot model does not have, which wise_ft_alphas cannot interpolate: "
                "use one of them."
            )
        if not f.freeze_text_tower:
            raise ValueError(
                "lp_ft: the head replaces the class text features, so a trained text tower would get no gradient: "
                "set freeze_text_tower: true."
            )
        if training_args.load_best_model_at_end:
            raise ValueError(
                "lp_ft with load_best_model_at_end would pair the best checkpoint's weights with the last step's "
                "head: remove load_best_model_at_end."
            )
        if training_args.fsdp or training_args.deepspeed:
            raise ValueError("lp_ft saves its head as whole tensors: run it without FSDP or DeepSpeed (DDP works).")
    if (probe or f.lp_ft) and not task.has_classes:
        raise ValueError(
            f"{'finetuning_type linear_probe' if probe else 'lp_ft'} fits a head over the classes: use it with "
            f"classification, not {task.name} (captions are free text, which a fixed head cannot score)."
        )
    if not (probe or f.lp_ft):
        for key in PROBE_KEYS:
            if is_set(f, key):
                raise ValueError(
                    f"{key} applies to finetuning_type linear_probe or lp_ft: true; remove it or use one of them."
                )
        return
    if f.classification_loss != "cross_entropy":
        raise ValueError("A probe head is trained with cross-entropy over the classes: remove classification_loss.")
    if f.probe_type == "lpp" and f.probe_c is not None:
        raise ValueError("probe_c is the regularization of probe_type logistic or zero_shot, not of lpp.")
    if f.probe_c is not None and not f.probe_c > 0:
        raise ValueError(f"probe_c must be positive, got {f.probe_c}.")
    if f.probe_type != "lpp" and f.probe_c is None and not data_args.val_dataset:
        raise ValueError(
            f"probe_type {f.probe_type} searches its regularization on the validation split: set val_dataset (never "
            "the test set), or a fixed probe_c."
        )
    for key in ("probe_views", "probe_epochs"):
        if getattr(f, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(f, key)}.")
    if f.probe_search_steps < 0:
        raise ValueError(f"probe_search_steps must be at least 0, got {f.probe_search_steps}.")
    if f.probe_type != "lpp" and is_set(f, "probe_epochs"):
        raise ValueError(
            f"probe_epochs counts LP++'s epochs; probe_type {f.probe_type} is solved by L-BFGS: remove it."
        )
    if (f.probe_type == "lpp" or f.probe_c is not None) and is_set(f, "probe_search_steps"):
        raise ValueError(
            "probe_search_steps belongs to the search for C (probe_type logistic / zero_shot without a fixed "
            "probe_c): remove it."
        )


@torch.no_grad()
def train_features(run: "Run") -> tuple[torch.Tensor, torch.Tensor]:
    """[images x views, dim] normalized features of the training images' augmented views (each rank encodes its
    share once; every rank holds all), and their labels."""
    trainer, train, views = run.trainer, run.datasets.train, run.finetuning_args.probe_views
    device = trainer.args.device
    pooled = shared_views(trainer, train, views, cache_device(trainer, len(train), views)).flatten(0, 1)
    features = F.normalize(project_views(trainer.model, pooled, device), dim=-1)
    return features, train.labels.to(device).repeat_interleave(views)


@torch.no_grad()
def fit_head(run: "Run") -> tuple[LinearHead, dict[str, float]]:
    """The probe of ``probe_type`` on the training features, chosen on the validation split when one is given."""
    trainer, datasets, f = run.trainer, run.datasets, run.finetuning_args
    model, classes = trainer.model, len(datasets.classnames)
    start = time.perf_counter()
    x, y = train_features(run)
    val = None
    if datasets.val is not None:
        check_disjoint(datasets.train, datasets.val, run.data_args, "the probe's training images")
        val = eval_features(trainer, datasets.val)
    text = model.task.class_weights(model).float()
    with torch.enable_grad():
        if f.probe_type == "lpp":
            fit = fit_lpp(x, y, text, f.probe_epochs, val)
        else:
            center = center_bias = None
            if f.probe_type == "zero_shot":  # the zero-shot classifier's logits: scale * cos (+ bias)
                center = model.logit_scale().float() * text
                bias = model.logit_bias()
                center_bias = None if bias is None else bias.float().expand(classes)
            if f.probe_c is None:
                fit = fit_logistic_searched(x, y, classes, val, f.probe_search_steps, center, center_bias)
            else:
                fit = fit_logistic(x, y, classes, f.probe_c, center, center_bias)
                if val is not None:
                    fit.val_accuracy = accuracy(F.linear(val[0], fit.weight, fit.bias), val[1])
    metrics = {"probe_fit_seconds": time.perf_counter() - start}
    for key, value in (("probe_c", fit.c), ("probe_epoch", fit.epoch), ("probe_val_accuracy", fit.val_accuracy)):
        if value is not None:
            metrics[key] = value
    logger.info_rank0(
        f"{f.probe_type} probe on {len(x)} training features ({f.probe_views} view(s) per image): "
        + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    )
    return LinearHead(fit, text if f.probe_type == "lpp" else None), metrics


def local_or_hub(path: str) -> str:
    """A local checkpoint as an absolute path (the head file names it from any working directory); a hub id as is."""
    return os.path.abspath(path) if os.path.isdir(path) else path


def head_header(run: "Run", method: str) -> dict[str, Any]:
    """What the head file records: the checkpoint it scores (``SAME_DIR``: the finetuned one beside it)."""
    f, data_args = run.finetuning_args, run.data_args
    return {
        "method": method,
        "checkpoint": SAME_DIR if method == "lp_ft" else local_or_hub(run.model_args.model_name_or_path),
        "classnames": list(run.datasets.classnames),
        "feature_dim": run.model.family.feature_width(run.model.clip),
        "probe_type": f.probe_type,
        "dataset": data_args.dataset,
        "num_shots": data_args.num_shots,
        "seed": run.training_args.seed,
    }


def install_probe(run: "Run", trainable: bool) -> dict[str, float]:
    """Fit the head and put it on the model (``trainable``: LP-FT trains it on); a resumed LP-FT run takes the
    checkpoint's head instead of fitting a new one."""
    checkpoint, device = run.training_args.resume_from_checkpoint, run.training_args.device
    if trainable and checkpoint:
        head, header = load_head(checkpoint, trainable=True)
        if header["classnames"] != list(run.datasets.classnames):
            raise ValueError(f"resume_from_checkpoint: the head in {checkpoint} scores other classes than this run's.")
        run.model.head = head.to(device)
        logger.info_rank0(f"lp_ft: the head of {checkpoint} restored.")
        return {}
    head, metrics = fit_head(run)
    head.requires_grad_(trainable)
    run.model.head = head.to(device)
    return metrics


class ProbeHeadCallback(TrainerCallback):
    """LP-FT: the head trains with the model, so every checkpoint holds it (``ClipTrainer`` writes it first)."""

    def __init__(self, run: "Run"):
        self.run = run

    def write_checkpoint(self, folder: str) -> None:
        save_head(self.run.model.head, folder, head_header(self.run, "lp_ft"))


def export_head(run: "Run", method: str) -> str:
    path = save_head(run.model.head, run.training_args.output_dir, head_header(run, method))
    logger.info_rank0(f"{method}: head saved to {path}.")
    return path
