"""Dassl's per-epoch learning rate (warm-up wrapper around cosine annealing), as a step-level LambdaLR.

Dassl steps its scheduler once per epoch: epoch e < W (warm-up) uses ``warmup_cons_lr`` (constant) or
``warmup_min_lr`` at e = 0 then ``lr * e / W`` (linear). After it, cosine annealing over T = ``num_train_epochs``
(eta_min 0) takes over. With WARMUP_RECOUNT the cosine starts counting at the end of the warm-up:
lr(e) = lr * (1 + cos(pi (e - W) / T)) / 2. Without it, Dassl moves the cosine's counter to W while its learning
rate stays at ``lr``, and torch's chained cosine update then gives
lr(e) = lr * (1 + cos(pi e / T)) / (1 + cos(pi W / T)).
"""

import math
from typing import Any

from torch.optim.lr_scheduler import LambdaLR


def dassl_epoch_lr(epoch: int, base_lr: float, args: Any, total_epochs: int, schedule: str) -> float:
    warmup = args.warmup_epochs
    if epoch < warmup:
        if args.warmup_type == "constant":
            return args.warmup_cons_lr
        return args.warmup_min_lr if epoch == 0 else base_lr * epoch / warmup
    if schedule == "constant":
        return base_lr
    if args.warmup_recount or warmup == 0:
        return base_lr * (1 + math.cos(math.pi * (epoch - warmup) / total_epochs)) / 2
    return base_lr * (1 + math.cos(math.pi * epoch / total_epochs)) / (1 + math.cos(math.pi * warmup / total_epochs))


def epoch_lr_scheduler(optimizer, args: Any, base_lr: float, steps_per_epoch: int, total_epochs: int, schedule: str):
    def factor(step: int) -> float:
        return dassl_epoch_lr(step // steps_per_epoch, base_lr, args, total_epochs, schedule) / base_lr

    return LambdaLR(optimizer, factor)
