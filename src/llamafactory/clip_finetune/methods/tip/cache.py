"""The Tip-Adapter cache: keys are image features, values one-hot labels; logits add alpha * exp(-beta (1 - f K^T)) V.

Tip-Adapter-F makes the keys a learnable linear layer initialized from the cache (the values stay fixed).
"""

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...hparams.model_args import is_adapter_dir
from ...tasks.base import HeadScores
from ..tensor_file import check_tensors, header_mismatch, read_tensors, write_tensors


CACHE_FILE = "tip_cache.safetensors"


class TipCache(nn.Module):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, alpha: float, beta: float, learnable: bool):
        super().__init__()
        self.keys = nn.Parameter(keys.clone(), requires_grad=learnable)
        self.register_buffer("values", values.clone())
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Cache logits for L2-normalized image features: alpha * exp(-beta * (1 - f K^T)) V."""
        affinity = image_features @ self.keys.to(image_features.dtype).t()
        return self.alpha * torch.exp(-self.beta * (1 - affinity)) @ self.values.to(image_features.dtype)


def build_keys(views: torch.Tensor) -> torch.Tensor:
    """[images, views, dim] normalized features -> keys: the per-image mean over views, re-normalized."""
    return F.normalize(F.normalize(views, dim=-1).mean(dim=1), dim=-1)


def tip_search_grid(scale: list[float], steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper code's grids: beta in [0.1, scale[0]) with steps[0] values, alpha likewise with scale[1]."""
    betas = torch.arange(steps[0]) * (scale[0] - 0.1) / steps[0] + 0.1
    alphas = torch.arange(steps[1]) * (scale[1] - 0.1) / steps[1] + 0.1
    return betas, alphas


def affinity_powers(affinity: torch.Tensor, beta: torch.Tensor):
    """exp(-beta_i (1 - A)) for each beta: for evenly spaced betas one exp, then a multiply per step (cheaper)."""
    gaps = beta[1:] - beta[:-1]
    if len(beta) > 2 and not torch.allclose(gaps, gaps[0].expand_as(gaps)):
        yield from (torch.exp(-b * (1 - affinity)) for b in beta)
        return
    current = torch.exp(-beta[0] * (1 - affinity))
    yield current
    if len(beta) > 1:
        step = torch.exp(-(beta[1] - beta[0]) * (1 - affinity))
        for _ in range(len(beta) - 1):
            current = current * step
            yield current


def _alpha_bounds(d_logit, d_cache, others):
    """Where ``d_logit + alpha * d_cache`` is strictly positive against every ``others`` entry (last dim): alpha
    above ``low`` and below ``high``. Entries with no cache difference do not depend on alpha: ``flat`` is False
    where one of them is ahead whatever alpha is, and ``tied`` counts those that tie whatever alpha is (identical
    captions or prompts, or constant scores), which share the first place as in ``ranking.hit_probability``."""
    bound = -d_logit / d_cache
    inf = torch.full_like(bound, float("inf"))
    low = torch.where((d_cache > 0) & others, bound, -inf).amax(-1)
    high = torch.where((d_cache < 0) & others, bound, inf).amin(-1)
    level = (d_cache == 0) & others
    flat = (level & (d_logit < 0)).any(-1).logical_not()
    tied = (level & (d_logit == 0)).sum(-1)
    return low, high, flat, tied


def _first_place(d_logit, d_cache, others, alphas) -> torch.Tensor:
    """[..., alphas]: the top-1 credit of the true entry at each alpha, 1 / (1 + ties) inside its interval."""
    low, high, flat, tied = _alpha_bounds(d_logit, d_cache, others)
    inside = flat[..., None] & (alphas > low[..., None]) & (alphas < high[..., None])
    return inside / (1.0 + tied[..., None])


def _keep_best(best: tuple, scores: torch.Tensor, alphas: torch.Tensor, beta: torch.Tensor) -> tuple:
    """(score, alpha, beta) of the better of ``best`` and the best cell of ``scores`` [betas, alphas]."""
    value, index = scores.flatten().max(0)
    if value.item() <= best[0]:
        return best
    b, a = divmod(index.item(), len(alphas))
    return value.item(), alphas[a].item(), beta[b].item()


@torch.no_grad()
def search_alpha_beta(
    problem: HeadScores,
    affinity: torch.Tensor,
    betas: torch.Tensor,
    alphas: torch.Tensor,
    chunk: int = 16,
    budget: int = 2**24,
) -> tuple[float, float, float]:
    """Best (alpha, beta, score) on validation queries over the whole grid, in batched tensor operations; the score
    is the share of queries whose best true column ranks first (accuracy for classes, Recall@1 for captions).

    For one beta, a column's score is ``base + alpha * cache``, linear in alpha, so a true column j of query q ranks
    first for alpha in an open interval: above -dB/dC for every column whose cache score is lower than j's, below it
    for every column whose cache score is higher (dB, dC: j minus the other column; the query's other true columns
    do not compete). Computing that interval per true pair turns the alpha axis into comparisons instead of argmaxes
    over [alphas x queries x columns]. Ties that hold for every alpha share the first place as in evaluation
    (``ranking.hit_probability``); a tie at one exact alpha does not. True pairs are processed in blocks of at most
    ``budget`` elements per beta chunk.
    """
    device = affinity.device
    base, values, alphas = problem.base.to(affinity), problem.values.to(affinity), alphas.to(affinity)
    rows, cols = problem.rows.to(device), problem.cols.to(device)
    truth = torch.zeros(base.shape, dtype=torch.bool, device=device)
    truth[rows, cols] = True
    step = max(1, budget // (min(chunk, len(betas)) * base.shape[1]))
    best = (-1.0, 0.0, 0.0)
    for start in range(0, len(betas), chunk):
        beta = betas[start : start + chunk].to(affinity)
        cache = torch.stack([powers @ values for powers in affinity_powers(affinity, beta)])  # [b, queries, columns]
        hits = torch.zeros(len(beta), base.shape[0], len(alphas), device=device)
        for first in range(0, len(rows), step):
            query, column = rows[first : first + step], cols[first : first + step]
            d_base = base[query, column][:, None] - base[query]  # [pairs, columns]
            d_cache = cache[:, query, column][..., None] - cache[:, query]  # [b, pairs, columns]
            top = _first_place(d_base, d_cache, ~truth[query], alphas)  # [b, pairs, a]
            hits.scatter_reduce_(1, query[None, :, None].expand_as(top), top.to(hits.dtype), "amax")
        best = _keep_best(best, hits.mean(1), alphas, beta)
    score, alpha, beta = best
    return alpha, beta, score


def cache_shapes(header: dict[str, Any]) -> dict[str, tuple]:
    """keys [N, dim]; values one-hot over the classes [N, classes], or caption features [N, dim] (image_to_text)."""
    dim, classes = header["feature_dim"], len(header.get("classnames") or [])
    return {"keys": (None, dim), "values": (None, classes or dim)}


def save_cache(cache: TipCache, directory: str, header: dict[str, Any]) -> str:
    tensors = {"keys": cache.keys.detach().float().cpu().contiguous(), "values": cache.values.float().cpu()}
    return write_tensors(directory, CACHE_FILE, tensors, header)


def load_cache(directory: str, header: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The cached tensors if ``directory`` holds a cache built from the same things; an error if it differs."""
    saved = read_tensors(directory, CACHE_FILE)
    if saved is None:
        return None
    tensors, found = saved
    details = header_mismatch(found, header)
    path = os.path.join(directory, CACHE_FILE)
    if details:
        raise ValueError(
            f"tip_load_cache: {path} was built from something else ({details}). "
            "Use another tip_cache_dir, or set tip_load_cache: false to rebuild it."
        )
    check_tensors(path, tensors, cache_shapes(header))
    return tensors


def tip_run(path: str) -> dict[str, Any] | None:
    """A Tip-Adapter run's output dir (its cache file and no checkpoint of its own): the base checkpoint its cache
    names, the cache as a head with the alpha and beta it was saved with, and its classes."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "config.json")) or is_adapter_dir(path):
        return None
    saved = read_tensors(path, CACHE_FILE)
    if saved is None:
        return None
    tensors, header = saved
    missing = [key for key in ("checkpoint", "alpha", "beta") if key not in header]
    if missing or "keys" not in tensors or "values" not in tensors:
        raise ValueError(f"{path}/{CACHE_FILE} is not a finished Tip-Adapter run's cache (no {missing or 'tensors'}).")
    cache = TipCache(tensors["keys"], tensors["values"], header["alpha"], header["beta"], learnable=False)
    return {
        "method": "tip",
        "checkpoint": header["checkpoint"],
        "head": cache,
        "classnames": header.get("classnames") or [],
    }
