"""NaN/Inf guard: skip non-finite steps, count them, stop after too many in a row.

The skip itself happens inside DeepSpeed: a non-finite global gradient norm
makes the ZeRO optimizer discard the update and clear the gradients, leaving
weights and optimizer moments untouched (``bf16.check_grad_overflow`` in
our DeepSpeed config; stage 3 and fp32 always check). The train step makes
sure a non-finite *loss* also gives a non-finite norm (see
:func:`poison_if_nonfinite`). This callback observes the outcome, which is
identical on every rank, so all ranks stop at the same step.
"""

from __future__ import annotations

import math

import torch

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .callbacks import Callback, StepResult, TrainState

_log = get_logger("train.guard")


class NonFiniteTrainingError(CineSceneError):
    """Too many consecutive non-finite steps: the run stops, its last good checkpoint stays."""


def poison_if_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """The loss to backpropagate: NaN gradients everywhere when the loss is not finite.

    An infinite loss can still produce finite (if meaningless) gradients; a
    NaN factor guarantees the gradient norm is non-finite, so DeepSpeed drops
    the whole step on every rank, whatever the other micro batches did.
    """
    if torch.isfinite(loss.detach()).all():
        return loss
    return loss * float("nan")


class NonFiniteGuard(Callback):
    name = "nonfinite_guard"

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        bad = (not result.applied) or not math.isfinite(result.loss) or not math.isfinite(result.grad_norm)
        if bad:
            self.consecutive += 1
            self.total += 1
            _log.warning(
                "step %d: non-finite (loss %s, grad norm %s): update skipped (%d in a row, %d in total)",
                result.step,
                result.loss,
                result.grad_norm,
                self.consecutive,
                self.total,
            )
        else:
            self.consecutive = 0
        state.metrics["nonfinite_steps"] = self.total
        if self.consecutive >= self.max_consecutive:
            last = state.last_checkpoint or "none (no checkpoint was saved yet)"
            state.fatal = NonFiniteTrainingError(
                f"stopping at step {result.step}: {self.consecutive} non-finite steps in a row "
                f"(train.max_consecutive_nonfinite={self.max_consecutive}); the last good checkpoint is "
                f"{last}. Lower train.lr or train.grad_clip, or check the data"
            )

    def state_dict(self) -> dict | None:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state["consecutive"])
        self.total = int(state["total"])
