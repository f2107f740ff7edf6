"""WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022; mlfoundations/wise-ft): after
training, evaluate the weight-space interpolation (1 - alpha) * zero_shot + alpha * finetuned for each
``wise_ft_alphas`` value, pick alpha on ``val_dataset`` only, and keep that model as the run's output (the pure
finetune is saved beside it, in ``output_dir/finetuned``).

Only the parameters the method changed are interpolated (``Method.delta_parameters``): every trainable tensor of a
full or bias finetune, and LoRA's B matrices (B starts at zero, so interpolating B scales the update B A by alpha,
which is the interpolation of the merged weights). Both endpoints are kept in host memory; the device holds one model.
"""

import os
from typing import TYPE_CHECKING

import torch
from llamafactory.extras import logging


if TYPE_CHECKING:
    from .base import Method, Run


logger = logging.get_logger(__name__)

FINETUNED_DIR = "finetuned"


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in params.items()}


@torch.no_grad()
def interpolate(
    params: dict[str, torch.nn.Parameter], start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
) -> None:
    """Set ``params`` to (1 - alpha) * start + alpha * end, in place."""
    for name, param in params.items():
        param.copy_(torch.lerp(start[name].float(), end[name].float(), alpha).to(param))


def alpha_key(alpha: float) -> str:
    return f"{alpha:g}"


def run_wise_ft(run: "Run", method: "Method", start: dict[str, torch.Tensor]) -> dict[str, float]:
    """Save the pure finetune, evaluate every alpha (val, and eval when given), keep the best alpha on val."""
    trainer, f = run.trainer, run.finetuning_args
    trainer.save_model(os.path.join(run.training_args.output_dir, FINETUNED_DIR))
    params = method.delta_parameters(run.model.clip)
    end = snapshot(params)
    main = run.model.task.main_metric
    metrics, scores = {}, {}
    for alpha in f.wise_ft_alphas:
        interpolate(params, start, end, alpha)
        val = trainer.evaluate(run.datasets.val, metric_key_prefix=f"val_wise_ft_{alpha_key(alpha)}")
        metrics.update(val)
        scores[alpha] = val[f"val_wise_ft_{alpha_key(alpha)}_{main}"]
        if run.datasets.eval is not None:
            metrics.update(trainer.evaluate(metric_key_prefix=f"eval_wise_ft_{alpha_key(alpha)}"))
    best = max(scores, key=lambda a: (scores[a], a))  # ties: the larger alpha, nearer the finetune
    interpolate(params, start, end, best)
    metrics["wise_ft_alpha"] = best
    logger.info_rank0(
        f"wise_ft: val {main} per alpha {', '.join(f'{alpha_key(a)}: {s:.4f}' for a, s in scores.items())}; "
        f"alpha {alpha_key(best)} is the output (the pure finetune: output_dir/{FINETUNED_DIR})."
    )
    return metrics
