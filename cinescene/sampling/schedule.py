"""Noise levels of the sampling steps: uniform in sigma from 1 to 0, pushed through the training shift.

As Wan / DiffSynth-Studio sample: ``sigma_i = shift(1 - i/steps)`` for
i = 0..steps (``shift(s) = k*s / (1 + (k-1)*s)`` maps 1 -> 1 and 0 -> 0), the
model is evaluated at t = 1000 * sigma_i, and an Euler step moves x from
sigma_i to sigma_{i+1} along the predicted velocity (eps - x0).
"""

from __future__ import annotations

import torch

from cinescene.models.flow_matching import shift_sigma


def sampling_sigmas(steps: int, shift: float) -> torch.Tensor:
    """(steps + 1,) float64 noise levels, 1 first, 0 last."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
