"""Top-K hits with ties counted as a uniformly random order among the tied entries.

A true entry tied with others gets its expected share, never the benefit of the doubt: a model whose scores are all
equal scores chance (1/N at top-1), not 1.0. Accuracy, Recall@K and Tip-Adapter's alpha/beta search all count
through ``hit_probability``.
"""

import torch


def hit_probability(ahead: torch.Tensor, tied: torch.Tensor, own: torch.Tensor | int, k: int) -> torch.Tensor:
    """P(a true entry is in the top ``k``) when ``ahead`` wrong entries score strictly higher than the best true
    entry, ``tied`` wrong entries score the same, and ``own`` true entries share that best score; the tied block is
    in random order. It is 1 - C(tied, j) / C(tied + own, j) with j = k - ahead free places (0 if j <= 0)."""
    ahead, tied = ahead.double(), tied.double()
    own = torch.as_tensor(own, dtype=torch.float64, device=ahead.device).expand_as(ahead)
    free = k - ahead
    slots = free.clamp(min=0).minimum(tied)  # C(tied, j) = 0 when j > tied: some true entry is always in
    log_miss = (
        torch.lgamma(tied + 1)
        - torch.lgamma(tied - slots + 1)
        - torch.lgamma(tied + own + 1)
        + torch.lgamma(tied + own - slots + 1)
    )
    miss = torch.where(free > tied, torch.zeros_like(log_miss), log_miss.exp())
    return torch.where(free <= 0, torch.zeros_like(miss), 1 - miss)


def ranks_against(scores: torch.Tensor, best: torch.Tensor, wrong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: how many ``wrong`` entries score above ``best`` [rows, 1], and how many tie with it. A NaN never
    helps: a NaN wrong score counts as above, and a NaN ``best`` has every wrong entry above it."""
    ahead = (((scores > best) | scores.isnan() | best.isnan()) & wrong).sum(-1)
    tied = ((scores == best) & wrong).sum(-1)
    return ahead, tied


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Classification: per row, the probability that ``labels`` is among the top k classes, for each k."""
    true = logits.gather(1, labels[:, None])
    wrong = torch.ones_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], False)
    ahead, tied = ranks_against(logits, true, wrong)
    return {k: hit_probability(ahead, tied, 1, k) for k in ks}
