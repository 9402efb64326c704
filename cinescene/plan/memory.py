"""Per-rank memory under DeepSpeed ZeRO with the config's settings: model states, ZeRO's working set, phases.

Model states follow DeepSpeed's own estimators (``estimate_zero3_model_states_mem_needs``
and, for stages 1-2, ``estimate_zero2_model_states_mem_needs``, without offload:
per GPU ``4 x largest layer + 18 bytes x parameters / GPUs`` at stage 3), split
into what the 18 bytes are: the compute-dtype parameter partition (2), the fp32
gradient the optimizer step consumes (4), the fp32 master weights (4) and Adam's
two moments (8). DeepSpeed's estimator assumes every parameter trains; a frozen
parameter (VGGT) holds only its partition. DeepSpeed accumulates gradients in
the compute dtype between steps (2 bytes) and makes the fp32 copy at the step,
so the backward holds 2 bytes per trained parameter and GPU less than this
count: the plan errs on that side.

ZeRO-3's working set, on top (read from DeepSpeed 0.19's parameter
coordinator): parameters of at most ``stage3_param_persistence_threshold``
elements stay whole on every rank; a gathered parameter is released after use
unless it is used again within ``stage3_max_reuse_distance`` elements of the
parameter trace, so between the forward and the backward the last blocks stay
gathered (with activation checkpointing each later block appears three times
in that stretch: forward, recomputation, backward); the prefetcher gathers up
to ``stage3_prefetch_bucket_size`` (the engine sets it to
``parallel.reduce_bucket_size``) more, within ``stage3_max_live_parameters``;
gradients are collected in a ``reduce_bucket_size`` buffer before being
reduce-scattered.

The step: the optimizer runs after the backward has released the activations;
it adds the flattened compute-dtype gradient, and, for torch's AdamW (the
optimizer on a CPU), its temporaries (one fp32 tensor per moment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cinescene.config.schema import CineSceneConfig

from .activations import ActivationMemory
from .inventory import ParameterInventory

# DeepSpeed ZeRO-3 settings the engine leaves at DeepSpeed's defaults (DeepSpeedZeroConfig; a test
# keeps these equal to the installed DeepSpeed's).
MAX_REUSE_DISTANCE = 1_000_000_000
MAX_LIVE_PARAMETERS = 1_000_000_000

MASTER_BYTES = 4  # fp32 master weights
ADAM_BYTES = 8  # two fp32 moments
STEP_GRAD_BYTES = 4  # the fp32 gradient the optimizer step consumes
EMA_BYTES = 4  # train.ema: the fp32 average of this rank's partition (cinescene.train.ema)


def compute_bytes(precision: str) -> int:
    return 2 if precision == "bf16" else 4


@dataclass(frozen=True)
class ModelStates:
    """Per rank: the partitions DeepSpeed holds for the whole run (device, and host when offloading)."""

    parameters: int  # compute-dtype parameters (partitions at stage 3, whole at stages 1-2), frozen included
    gradients: int  # fp32 gradients as the optimizer step consumes them (DeepSpeed's count)
    optimizer: int  # fp32 master weights and Adam's moments
    largest_layer: int  # DeepSpeed's allowance for gathering the largest layer: its parameters and gradients
    host: int  # offloaded to host memory (parallel.offload_*)

    @property
    def device(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.largest_layer


def model_states(inv: ParameterInventory, cfg: CineSceneConfig, world: int) -> ModelStates:
    par = cfg.parallel
    cb = compute_bytes(cfg.train.precision)
    trained = (cb + STEP_GRAD_BYTES + MASTER_BYTES + ADAM_BYTES) * inv.trainable
    if par.zero_stage == 3:
        largest = 4 * inv.largest_layer  # gathered parameters and their gradients, 2 bytes each
        params = cb * inv.total / world
        grads = STEP_GRAD_BYTES * inv.trainable / world
    else:
        # DeepSpeed's ZeRO-2 estimate, 4 x P + 16 x P / GPUs: whole compute-dtype parameters and
        # gradients, partitioned fp32 states (ZeRO-1 keeps whole gradients too: the same count).
        largest = 0
        params = cb * inv.total
        grads = cb * inv.trainable + STEP_GRAD_BYTES * inv.trainable / world
    optimizer = (MASTER_BYTES + ADAM_BYTES) * inv.trainable / world
    host = 0.0
    if par.offload_optimizer == "cpu":
        host += (trained - cb * inv.trainable) / world
        optimizer = 0
        grads = 0 if par.zero_stage == 3 else cb * inv.trainable
    if par.offload_params == "cpu":
        host += params
        params = 0
    return ModelStates(
        parameters=round(params),
        gradients=round(grads),
        optimizer=round(optimizer),
        largest_layer=largest,
        host=round(host),
    )


def deepspeed_estimate(inv: ParameterInventory, world: int) -> int:
    """``estimate_zero3_model_states_mem_needs`` per GPU without offload (every parameter counted as trained):
    the figure the plan's stage-3 model states equal when nothing is frozen."""
    return 4 * inv.largest_layer + int(18 * inv.total / world)


@dataclass(frozen=True)
class WorkingSet:
    """ZeRO's buffers and gathered parameters during the forward and backward, per rank."""

    persistent: int  # whole small parameters on every rank (ZeRO-3)
    reuse_window: int  # the last blocks' parameters, kept gathered from the forward into the backward
    prefetch: int  # parameters gathered ahead of use
    reduce_bucket: int  # the gradient bucket

    @property
    def total(self) -> int:
        return self.persistent + self.reuse_window + self.prefetch + self.reduce_bucket


def kept_blocks(inv: ParameterInventory, recompute: bool) -> int:
    """Blocks whose parameters ZeRO-3 keeps gathered from the forward into the backward (module doc)."""
    gathered = inv.block_gathered
    if not inv.num_blocks or gathered <= 0:
        return inv.num_blocks
    appearances = 3 if recompute else 2  # each later block: forward, (recomputation,) backward
    return min(inv.num_blocks, math.ceil(MAX_REUSE_DISTANCE / (appearances * gathered)))


def working_set(inv: ParameterInventory, cfg: CineSceneConfig, recompute: bool) -> WorkingSet:
    par = cfg.parallel
    cb = compute_bytes(cfg.train.precision)
    bucket = par.reduce_bucket_size
    if par.zero_stage == 3 and par.sequence > 1:
        bucket = max(bucket, inv.largest_trainable)  # the engine's all-reduce path (cinescene.train.engine)
    if par.zero_stage != 3:
        return WorkingSet(0, 0, 0, cb * bucket)
    window = kept_blocks(inv, recompute) * inv.block_gathered
    rest = sum(g.elements for g in inv.gathered.values()) - window  # what there is left to prefetch
    prefetch = min(par.reduce_bucket_size, max(0, MAX_LIVE_PARAMETERS - window), rest)
    if par.offload_params == "cpu":
        window = prefetch = 0  # gathered from host memory one module at a time (the largest-layer allowance)
    return WorkingSet(
        persistent=cb * inv.persistent,
        reuse_window=cb * window,
        prefetch=cb * prefetch,
        reduce_bucket=cb * bucket,
    )


@dataclass(frozen=True)
class RankMemory:
    """Everything on one rank's device at the step's peak, and the host memory beside it."""

    states: ModelStates
    working: WorkingSet
    ema: int
    activations: ActivationMemory
    step_extra: int  # the optimizer step's temporaries (after the activations are released)

    @property
    def resident(self) -> int:
        """Held across steps: model states, ZeRO's persistent parameters and bucket, the EMA."""
        return self.states.device + self.working.persistent + self.working.reduce_bucket + self.ema

    @property
    def backward_peak(self) -> int:
        """The forward's and the backward's peak (the backward's, for any real model: see .activations)."""
        gathered = self.working.reuse_window + self.working.prefetch
        return self.resident + gathered + self.activations.peak

    @property
    def step_peak(self) -> int:
        return self.resident + self.step_extra

    @property
    def peak(self) -> int:
        return max(self.backward_peak, self.step_peak)

    @property
    def growth(self) -> int:
        """Peak minus what is resident before the step: what `cinescene bench step` measures on a CPU."""
        return self.peak - self.resident


def rank_memory(
    inv: ParameterInventory, cfg: CineSceneConfig, world: int, activations: ActivationMemory, on_gpu: bool
) -> RankMemory:
    cb = compute_bytes(cfg.train.precision)
    states = model_states(inv, cfg, world)
    step_extra = cb * inv.trainable / world  # the flattened compute-dtype gradient of the partition
    if not on_gpu or cfg.train.optimizer_impl == "torch":
        step_extra += 2 * MASTER_BYTES * inv.trainable / world  # torch AdamW's foreach temporaries
    ema = EMA_BYTES * math.ceil(inv.trainable / world)  # every rank averages its share, at any stage
    return RankMemory(
        states=states,
        working=working_set(inv, cfg, activations.recompute),
        ema=ema if cfg.train.ema.enabled else 0,
        activations=activations,
        step_extra=round(step_extra),
    )
