"""Communication per optimizer step and rank: ZeRO's collectives and the sequence-parallel all-to-alls.

Volumes are the bytes one rank sends (a ring collective receives as much): an
all-gather or reduce-scatter of M bytes over n ranks moves (n-1)/n x M, an
all-reduce twice that, an all-to-all of a rank's M bytes (n-1)/n x M.

ZeRO-3, per micro batch (DeepSpeed reduces every micro batch's gradients):
the forward gathers every partitioned parameter it uses (compute dtype);
the backward gathers the trained path's parameters once more (with activation
checkpointing the recomputation gathers them and the block's backward reuses
them), except the blocks still gathered from the forward (the reuse window,
cinescene.plan.memory) and the frozen VGGT, which has no backward; the
gradients are reduce-scattered in ``reduce_bucket_size`` buckets (all-reduced
with sequence parallelism, where the engine turns reduce-scatter off). Stages
1-2 all-reduce (reduce-scatter) gradients and all-gather the updated
parameters once per step. Persistent parameters are never gathered.

Sequence parallelism (Ulysses), per block and micro batch: four all-to-alls
(q, k, v in, the output back) in the forward, four in the recomputation, four
in the backward, each of a rank's (b, L/P, dim) shard; the head's outputs are
all-gathered once.

Time of one ring collective over n ranks moving M bytes: ``(n-1) x latency +
(n-1)/n x M / bandwidth``, with the intra-node bandwidth when the group fits in
a node and the inter-node one otherwise (``plan.*`` config keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from cinescene.config.schema import CineSceneConfig
from cinescene.models.flops import TokenCounts

from .inventory import ParameterInventory, Region
from .memory import MAX_REUSE_DISTANCE, compute_bytes, kept_blocks


class Collective(str, Enum):
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_REDUCE = "all_reduce"
    ALL_TO_ALL = "all_to_all"


SEQUENCE_PARALLEL = "sequence-parallel"
FORWARD_GATHERS = "parameters, forward"
GRADIENTS = "gradients"

# Bytes each rank sends, as a multiple of (n-1)/n x the collective's size.
_WIRE_FACTOR = {
    Collective.ALL_GATHER: 1,
    Collective.REDUCE_SCATTER: 1,
    Collective.ALL_REDUCE: 2,
    Collective.ALL_TO_ALL: 1,
}


@dataclass(frozen=True)
class Traffic:
    """One kind of collective in one optimizer step of one rank."""

    what: str  # what moves (parameters forward, gradients, ...)
    collective: Collective
    size: int  # bytes of all these collectives (tensors gathered or reduced; a rank's all-to-all input)
    count: int  # how many collectives
    group: int  # ranks taking part in each

    @property
    def wire_bytes(self) -> int:
        """Bytes this rank sends."""
        if self.group <= 1:
            return 0
        return round(_WIRE_FACTOR[self.collective] * (self.group - 1) / self.group * self.size)

    def seconds(self, bandwidth_gbps: float, latency_us: float) -> float:
        if self.group <= 1 or not self.count:
            return 0.0
        steps = _WIRE_FACTOR[self.collective] * (self.group - 1) * self.count
        return steps * latency_us * 1e-6 + self.wire_bytes / (bandwidth_gbps * 1e9)


def backward_gathers(inv: ParameterInventory, recompute: bool) -> tuple[int, int]:
    """Elements and modules ZeRO-3 gathers again for the backward: the blocks outside the reuse window, and
    the parameters used before the blocks unless the whole stretch to their backward is within the reuse
    distance. The head's backward directly follows its forward: it stays gathered; VGGT has no backward."""
    blocks = inv.gathered[Region.BLOCKS]
    again = inv.num_blocks - kept_blocks(inv, recompute)
    per_block_modules = blocks.modules / inv.num_blocks if inv.num_blocks else 0
    elements, modules = again * inv.block_gathered, round(again * per_block_modules)
    before = inv.gathered[Region.BEFORE_BLOCKS]
    stretch = (3 if recompute else 2) * blocks.elements + inv.gathered[Region.HEAD].elements
    if stretch >= MAX_REUSE_DISTANCE:
        elements, modules = elements + before.elements, modules + before.modules
    return elements, modules


def step_traffic(
    inv: ParameterInventory,
    cfg: CineSceneConfig,
    tokens: TokenCounts,
    *,
    world: int,
    micro_batch: int,
    sequence: int,
    grad_accum: int,
) -> list[Traffic]:
    """Every collective of one optimizer step on one rank (see the module doc)."""
    par, cb = cfg.parallel, compute_bytes(cfg.train.precision)
    recompute = cfg.model.activation_checkpointing
    traffic = []
    if par.zero_stage == 3:
        forward = sum(g.elements for g in inv.gathered.values())
        forward_modules = sum(g.modules for g in inv.gathered.values())
        backward, backward_modules = backward_gathers(inv, recompute)
        traffic += [
            Traffic(
                "parameters, forward",
                Collective.ALL_GATHER,
                grad_accum * cb * forward,
                grad_accum * forward_modules,
                world,
            ),
            Traffic(
                "parameters, backward",
                Collective.ALL_GATHER,
                grad_accum * cb * backward,
                grad_accum * backward_modules,
                world,
            ),
        ]
        bucket = par.reduce_bucket_size
        if sequence > 1:
            bucket = max(bucket, inv.largest_trainable)
        reduce = Collective.ALL_REDUCE if sequence > 1 else Collective.REDUCE_SCATTER
        buckets = math.ceil(inv.trainable / bucket)
        traffic.append(
            Traffic(GRADIENTS, reduce, grad_accum * cb * inv.trainable, grad_accum * buckets, world)
        )
    else:
        buckets = math.ceil(inv.trainable / par.reduce_bucket_size)
        traffic += [
            Traffic(
                "gradients",
                Collective.ALL_REDUCE,
                grad_accum * cb * inv.trainable,
                grad_accum * buckets,
                world,
            ),
            Traffic("parameters, after the step", Collective.ALL_GATHER, cb * inv.trainable, buckets, world),
        ]
    if sequence > 1:
        local = math.ceil(tokens.total / sequence)
        shard = micro_batch * local * cfg.model.dim * cb
        per_block = 12 if recompute else 8
        calls = grad_accum * per_block * cfg.model.num_layers
        head = micro_batch * local * cfg.model.out_dim * math.prod(cfg.model.patch_size) * cb
        traffic += [
            Traffic(f"{SEQUENCE_PARALLEL} attention", Collective.ALL_TO_ALL, calls * shard, calls, sequence),
            Traffic(
                f"{SEQUENCE_PARALLEL} output",
                Collective.ALL_GATHER,
                grad_accum * head * sequence,
                grad_accum,
                sequence,
            ),
        ]
    return traffic


@dataclass(frozen=True)
class CommTime:
    zero_s: float  # ZeRO's collectives (prefetched and overlapped with compute on a GPU)
    exposed_s: float  # of which nothing can hide: each micro batch's first gather and last gradient bucket
    sequence_s: float  # the all-to-alls (on the critical path)
    wire_bytes: int


def comm_time(traffic: list[Traffic], cfg: CineSceneConfig, gpus_per_node: int, grad_accum: int) -> CommTime:
    plan = cfg.plan
    zero = exposed = sequence = 0.0
    for item in traffic:
        across = item.group > gpus_per_node  # groups are consecutive ranks: a node holds all of one or none
        bandwidth = plan.inter_node_gbps if across else plan.intra_node_gbps
        seconds = item.seconds(bandwidth, plan.link_latency_us)
        if item.what.startswith(SEQUENCE_PARALLEL):
            sequence += seconds
            continue
        zero += seconds
        if item.count and item.what in (FORWARD_GATHERS, GRADIENTS):
            exposed += grad_accum * seconds / item.count  # one collective per micro batch
    return CommTime(zero, exposed, sequence, sum(item.wire_bytes for item in traffic))
