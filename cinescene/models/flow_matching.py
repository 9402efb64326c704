"""Rectified-flow training objective as Wan / DiffSynth-Studio train it.

Noise levels live on a grid of ``N = num_train_timesteps`` values,
``sigma_i = 1 - i/N`` (i = 0..N-1, so 1, 0.999, ..., 1/N: the clean end
``sigma = 0`` is never trained), each pushed through the shift
``sigma' = s*sigma / (1 + (s-1)*sigma)`` (CineScene: s = 15, which spends
most samples at high noise). A training sample draws ``i`` uniformly and
uses

    x_t = (1 - sigma') x0 + sigma' eps,   target = eps - x0,   t = N * sigma'.

Weighting "wan" is DiffSynth's bell-shaped weight over the shifted timestep
value: ``y(t) = exp(-2 ((t - N/2) / N)^2)``, minus its minimum over the grid,
scaled so the grid's weights average 1 (the loss keeps its scale). Weighting
"uniform" is plain MSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cinescene.config.train import FlowMatchingConfig


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigma / (1 + (shift - 1) * sigma)


@dataclass
class NoisedBatch:
    x_t: torch.Tensor  # model input, like x0
    target: torch.Tensor  # eps - x0
    timestep: torch.Tensor  # (B,) in (0, N]
    weight: torch.Tensor  # (B,) per-sample loss weight


class FlowMatching:
    def __init__(self, cfg: FlowMatchingConfig):
        self.cfg = cfg
        n = cfg.num_train_timesteps
        base = 1.0 - torch.arange(n, dtype=torch.float64) / n
        self.sigmas = shift_sigma(base, cfg.shift)
        self.timesteps = self.sigmas * n
        if cfg.weighting == "wan":
            bell = torch.exp(-2 * ((self.timesteps - n / 2) / n) ** 2)
            bell = bell - bell.min()
            self.weights = bell * (n / bell.sum())
        else:
            self.weights = torch.ones(n, dtype=torch.float64)

    def noise(self, x0: torch.Tensor, generators: Sequence[torch.Generator]) -> NoisedBatch:
        """Draw a grid index and noise for sample ``i`` from
        ``generators[i]`` (on CPU, then moved to x0's device)."""
        if len(generators) != x0.shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {x0.shape[0]}")
        index = torch.cat([torch.randint(0, len(self.sigmas), (1,), generator=g) for g in generators])
        eps = torch.stack([torch.randn(x0.shape[1:], generator=g, dtype=torch.float32) for g in generators])
        eps = eps.to(x0.device, x0.dtype)
        sigma = self.sigmas[index].to(x0.device, torch.float32)
        view = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return NoisedBatch(
            x_t=(1 - view) * x0 + view * eps,
            target=eps - x0,
            timestep=self.timesteps[index].to(x0.device, torch.float32),
            weight=self.weights[index].to(x0.device, torch.float32),
        )

    @staticmethod
    def loss(prediction: torch.Tensor, noised: NoisedBatch) -> torch.Tensor:
        """Weighted MSE over the video latents (the model returns video tokens only)."""
        per_sample = (prediction.float() - noised.target.float()).pow(2).flatten(1).mean(dim=1)
        return (per_sample * noised.weight).mean()
