"""Fitting a linear head on frozen image features: full-batch solvers, no backbone pass.

- Logistic regression as CoOp's ``lpclip`` protocol runs it (sklearn's L-BFGS, multinomial, L2, 1,000 iterations):
  minimize ``C * sum_i CE_i + ||W - W0||^2 / 2`` (intercept not penalized), with C chosen on the validation split
  by lpclip's search (a grid of seven decades, then eight bisection steps in log space). ``W0 = 0`` is the plain
  probe; ``W0`` = the zero-shot classifier is the zero-shot-initialized probe, which a small C keeps near zero-shot.
- LP++ (Huang, Shakeri et al., CVPR 2024; FereshteShakeri/FewShot-CLIP-Strong-Baseline): logits
  ``x W^T + b + alpha * (x T^T)`` with class text features T and a class-wise blend alpha; W starts at the class
  sums of the features, alpha at 250 times the mean score of each class's images against its own class text; W and
  b take SGD steps (momentum 0.9) of the closed-form size ``4 N / lambda_max(X^T X)``, alpha a step of
  ``N / (4 max_k sum_n (x_n . T_k)^2)`` every tenth epoch along its accumulated gradient (the reference never clears
  it); the epoch with the best validation accuracy is kept.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # lpclip's first pass, in its order (ties keep the larger C)
LPP_ALPHA_SCALE = 250.0  # the reference's initial blend: 250 / shots * (class centroid text scores * shots)
LPP_ALPHA_EVERY = 10  # epochs between two updates of the blend


@dataclass
class LinearFit:
    """A fitted head: logits ``x W^T + b`` (+ ``alpha * (x T^T)`` for LP++), and what chose it."""

    weight: torch.Tensor  # [classes, dim]
    bias: torch.Tensor  # [classes]
    alpha: torch.Tensor | None = None  # [classes] (LP++)
    c: float | None = None  # the regularization the search chose (logistic)
    val_accuracy: float | None = None
    epoch: int | None = None  # the epoch kept (LP++)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    c: float,
    center: torch.Tensor | None = None,
    center_bias: torch.Tensor | None = None,
    max_iter: int = 1000,
) -> LinearFit:
    """L2-regularized multinomial logistic regression in float64 by L-BFGS: the objective is divided by C * N (the
    minimizer is the same; the gradient tolerance then does not depend on C). The search starts from ``center``."""
    x, y = x.double(), y.long()
    center = x.new_zeros(classes, x.shape[1]) if center is None else center.double()
    weight = center.clone().requires_grad_(True)
    bias = (x.new_zeros(classes) if center_bias is None else center_bias.double().clone()).requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    penalty = 0.5 / (c * len(x))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(x, weight, bias), y) + penalty * (weight - center).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearFit(weight.detach().float(), bias.detach().float(), c=c)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).double().mean().item()


def search_c(score: Callable[[float], float], steps: int = 8, grid: tuple[float, ...] = C_GRID) -> tuple[float, float]:
    """lpclip's search for C: the best decade of ``grid`` by ``score`` (validation accuracy), then ``steps``
    bisections in log space between a tenth and ten times it, each moving toward the better end; the C of the last
    step is the result, as in lpclip. Each C is scored once. Returns (C, its score)."""
    seen: dict[float, float] = {}

    def at(c: float) -> float:
        if c not in seen:
            seen[c] = score(c)
        return seen[c]

    peak = max(grid, key=lambda c: (at(c), -grid.index(c)))  # the first of equal scores, as np.argmax
    chosen, left, right = peak, peak * 1e-1, peak * 1e1
    for _ in range(steps):
        middle = 10 ** (0.5 * (math.log10(left) + math.log10(right)))
        if at(left) < at(right):
            chosen, left = right, middle
        else:
            chosen, right = left, middle
    return chosen, at(chosen)


def fit_logistic_searched(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    val: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    center: torch.Tensor | None = None,
    center_bias: torch.Tensor | None = None,
) -> LinearFit:
    """``fit_logistic`` at the C that ``search_c`` picks on ``val`` (features, labels)."""
    fits: dict[float, LinearFit] = {}

    def score(c: float) -> float:
        fits[c] = fit_logistic(x, y, classes, c, center, center_bias)
        return accuracy(F.linear(val[0].float(), fits[c].weight, fits[c].bias), val[1])

    c, val_accuracy = search_c(score, steps)
    fits[c].val_accuracy = val_accuracy
    return fits[c]


def class_sums(x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """[classes, dim]: the sum of each class's features (``one_hot^T x``)."""
    return F.one_hot(y, classes).to(x.dtype).t() @ x


def lpp_start(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, float, float, float]:
    """LP++'s starting point and step sizes: W0 (class sums), the initial blend (250 x the mean over the classes of
    their images' mean score against their own class text: the reference's ``compute_centroids_alpha`` multiplies
    the one-hot labels elementwise), the step of W (4 N / largest eigenvalue of X^T X) and of the blend
    (N / (4 max_k sum_n (x_n . T_k)^2)). Step sizes in float64."""
    classes = len(text)
    counts = torch.bincount(y, minlength=classes).to(x.dtype)
    text_scores = x @ text.t()
    own = class_sums(text_scores, y, classes).diagonal() / counts.clamp(min=1)
    alpha = LPP_ALPHA_SCALE * own[counts > 0].mean().item()
    x64 = x.double()
    lr_w = 4 * len(x) / torch.linalg.eigvalsh(x64.t() @ x64).max().item()
    lr_alpha = len(x) / (4 * (text_scores.double() ** 2).sum(dim=0).max().item())
    return class_sums(x, y, classes), alpha, lr_w, lr_alpha


def lpp_logits(x: torch.Tensor, weight, bias, alpha, text) -> torch.Tensor:
    return F.linear(x, weight, bias) + alpha * (x @ text.t())


def fit_lpp(
    x: torch.Tensor,
    y: torch.Tensor,
    text: torch.Tensor,
    epochs: int,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LinearFit:
    """LP++'s full-batch optimization (see the module's docstring); without ``val``, the last epoch is kept."""
    x, text = x.float(), text.float()
    start, alpha0, lr_w, lr_alpha = lpp_start(x, y, text)
    weight = start.clone().requires_grad_(True)
    bias = x.new_zeros(len(text)).requires_grad_(True)
    alpha = torch.full((len(text),), alpha0, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.SGD([weight, bias], lr=lr_w, momentum=0.9)
    best = LinearFit(weight.detach().clone(), bias.detach().clone(), alpha.detach().clone(), epoch=0)
    for epoch in range(epochs):
        loss = F.cross_entropy(lpp_logits(x, weight, bias, alpha, text), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % LPP_ALPHA_EVERY == 0:
            with torch.no_grad():
                alpha -= lr_alpha * alpha.grad  # the sum of every epoch's gradient so far, as the reference
        if val is None:
            best = LinearFit(weight.detach().clone(), bias.detach().clone(), alpha.detach().clone(), epoch=epoch)
            continue
        with torch.no_grad():
            score = accuracy(lpp_logits(val[0].float(), weight, bias, alpha, text), val[1])
        if best.val_accuracy is None or score >= best.val_accuracy:  # later epochs win ties, as the reference
            best = LinearFit(
                weight.detach().clone(), bias.detach().clone(), alpha.detach().clone(), None, score, epoch
            )
    return best
