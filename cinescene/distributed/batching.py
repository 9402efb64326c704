"""Batch arithmetic: global batch = micro batch x accumulation x data-parallel size."""

from __future__ import annotations

from dataclasses import dataclass

from cinescene.config.train import TrainConfig
from cinescene.errors import CineSceneError


@dataclass(frozen=True)
class BatchPlan:
    micro_batch_size: int  # samples per rank per forward
    grad_accum: int  # forwards per optimizer step
    dp_size: int  # data-parallel ranks (world / sequence-parallel size)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.dp_size

    @property
    def samples_per_rank_step(self) -> int:
        return self.micro_batch_size * self.grad_accum


def plan_batch(train: TrainConfig, world_size: int, sequence: int = 1) -> BatchPlan:
    """Derive the accumulation from ``train.global_batch_size`` when given; one-line errors otherwise."""
    if world_size % sequence:
        raise CineSceneError(f"world size {world_size} is not a multiple of parallel.sequence={sequence}")
    dp = world_size // sequence
    micro = train.micro_batch_size
    if train.global_batch_size is None:
        return BatchPlan(micro, train.grad_accum, dp)
    per_step = micro * dp
    if train.global_batch_size % per_step:
        raise CineSceneError(
            f"train.global_batch_size={train.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={micro} x data-parallel size {dp} (world {world_size} / "
            f"parallel.sequence {sequence}) = {per_step}; change the batch size or the number of ranks"
        )
    accum = train.global_batch_size // per_step
    return BatchPlan(micro, accum, dp)
