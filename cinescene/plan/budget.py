"""Checkpoint size per rank, the time a save takes, and the preemption lead time it must fit in.

What a step directory holds per rank (cinescene.train.checkpoint, DeepSpeed's
ZeRO checkpoint with frozen parameters excluded): the optimizer shard (fp32
master weights and Adam's two moments of the rank's partition, 12 bytes per
trained parameter and rank, at every ZeRO stage) and the rank state (the EMA
shard, 4 bytes per trained parameter and rank, with ``train.ema``). At stages
1-2 rank 0 also writes the whole trained module in the compute dtype. The
model-states files of stage 3, RNG states, the trainer record, config and
manifest are kilobytes.

A SLURM job gets ``launch.slurm.signal``'s warning that many seconds before
its time limit. The ranks save at the next step boundary, so the lead must
cover up to one step plus the save, written at ``plan.checkpoint_write_gbps``
per node (each node's ranks write their own shards at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cinescene.config.schema import CineSceneConfig

from .inventory import ParameterInventory
from .memory import ADAM_BYTES, EMA_BYTES, MASTER_BYTES, compute_bytes


def checkpoint_bytes_per_rank(
    inv: ParameterInventory, cfg: CineSceneConfig, world: int, rank: int = 0
) -> int:
    """Bytes rank ``rank`` of ``world`` writes into one checkpoint (see the module doc)."""
    partition = math.ceil(inv.trainable / world)
    per_rank = (MASTER_BYTES + ADAM_BYTES) * partition
    if cfg.train.ema.enabled:
        per_rank += EMA_BYTES * partition
    if rank == 0 and cfg.parallel.zero_stage != 3:
        per_rank += compute_bytes(cfg.train.precision) * inv.trainable
    return per_rank


def signal_lead_seconds(cfg: CineSceneConfig) -> int:
    """Seconds between ``launch.slurm.signal``'s warning and the time limit ('USR1@180' -> 180)."""
    return int(cfg.launch.slurm.signal.partition("@")[2])


@dataclass(frozen=True)
class PreemptionBudget:
    rank_bytes: int  # rank 0's share (the largest)
    total_bytes: int
    node_bytes: int  # what the busiest node writes
    save_s: float
    step_s: float
    lead_s: int

    @property
    def needed_s(self) -> float:
        """Worst case from the warning to a finished save: the step in flight, then the save."""
        return self.step_s + self.save_s

    @property
    def fits(self) -> bool:
        return self.needed_s <= self.lead_s


def preemption_budget(
    inv: ParameterInventory, cfg: CineSceneConfig, world: int, gpus_per_node: int, step_s: float
) -> PreemptionBudget:
    rank0 = checkpoint_bytes_per_rank(inv, cfg, world, 0)
    other = checkpoint_bytes_per_rank(inv, cfg, world, 1) if world > 1 else 0
    node = rank0 + (min(world, gpus_per_node) - 1) * other
    return PreemptionBudget(
        rank_bytes=rank0,
        total_bytes=rank0 + (world - 1) * other,
        node_bytes=node,
        save_s=node / (cfg.plan.checkpoint_write_gbps * 1e9),
        step_s=step_s,
        lead_s=signal_lead_seconds(cfg),
    )
