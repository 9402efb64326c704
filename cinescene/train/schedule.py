"""Learning rate as a pure function of the optimizer step: linear warmup, then constant or cosine.

A pure function (rather than a stateful torch scheduler) means a resumed run
needs no scheduler state: the LR of step k is the same whoever computes it.
"""

from __future__ import annotations

import math

from cinescene.config.train import TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """LR used by optimizer step ``step`` (1-based: the first update is step 1).

    Warmup: ``lr * step / warmup_steps`` for step <= warmup_steps. Cosine: the
    first step after warmup uses ``lr``, then it decays towards ``lr * min_lr_ratio``,
    reached just after ``max_steps`` (so the last step still learns something).
    """
    peak = train.lr
    if train.warmup_steps and step <= train.warmup_steps:
        return peak * step / train.warmup_steps
    if train.schedule == "constant":
        return peak
    floor = peak * train.min_lr_ratio
    span = max(1, train.max_steps - train.warmup_steps)
    progress = min(1.0, max(0.0, (step - train.warmup_steps - 1) / span))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
