"""The plan of one config on N GPUs: memory per rank, what fits, step time, communication.

:func:`prepare` reads everything that does not depend on the layout (the
parameter inventory from the meta-device model, the sample's tokens, the
FLOPs of `cinescene model info`); :func:`layout_memory` and
:func:`layout_time` evaluate one layout (GPUs, micro batch, sequence-parallel
degree); :func:`fit` searches the layouts the config allows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cinescene.config.schema import CineSceneConfig
from cinescene.config.train import MAX_MICRO_BATCH
from cinescene.models.flops import FlopsPerSample, SampleShape, TokenCounts, flops_per_sample, token_counts

from .activations import PlannedBackend, activation_memory, planned_backend
from .comms import Traffic, comm_time, step_traffic
from .inventory import ParameterInventory, parameter_inventory
from .memory import RankMemory, compute_bytes, rank_memory

# GPUs per node when the config names none (launch.slurm.gpus_per_node=0 is a CPU job).
DEFAULT_GPUS_PER_NODE = 8


@dataclass(frozen=True)
class PlanInputs:
    """What the plan reads once per config."""

    cfg: CineSceneConfig
    inventory: ParameterInventory
    shape: SampleShape
    tokens: TokenCounts
    flops: FlopsPerSample
    backend: PlannedBackend
    on_gpu: bool

    @property
    def gpus_per_node(self) -> int:
        return self.cfg.launch.slurm.gpus_per_node or DEFAULT_GPUS_PER_NODE


def prepare(cfg: CineSceneConfig, *, on_gpu: bool = True) -> PlanInputs:
    """The config's inventory, tokens and FLOPs (the model is built on the meta device: nothing allocated)."""
    inventory = parameter_inventory(cfg.model, cfg.parallel.param_persistence_threshold)
    shape = SampleShape.from_config(cfg)
    return PlanInputs(
        cfg=cfg,
        inventory=inventory,
        shape=shape,
        tokens=token_counts(cfg.model, shape),
        flops=flops_per_sample(cfg.model, shape, scene_encoder_trains=inventory.vggt_trains),
        backend=planned_backend(cfg.model.attention.backend, on_gpu),
        on_gpu=on_gpu,
    )


@dataclass(frozen=True)
class Layout:
    gpus: int
    micro_batch: int
    sequence: int
    grad_accum: int

    @property
    def data_parallel(self) -> int:
        return self.gpus // self.sequence

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.data_parallel


def grad_accum_for(cfg: CineSceneConfig, gpus: int, micro_batch: int, sequence: int) -> int | None:
    """The accumulation cinescene.distributed.batching would derive; None when the global batch does not
    divide."""
    dp = gpus // sequence
    if cfg.train.global_batch_size is None:
        return cfg.train.grad_accum
    if cfg.train.global_batch_size % (micro_batch * dp):
        return None
    return cfg.train.global_batch_size // (micro_batch * dp)


def configured_layout(cfg: CineSceneConfig, gpus: int) -> Layout | None:
    """The layout the config asks for on ``gpus`` GPUs; None when its batch arithmetic does not work out."""
    sequence, micro = cfg.parallel.sequence, cfg.train.micro_batch_size
    if gpus % sequence:
        return None
    accum = grad_accum_for(cfg, gpus, micro, sequence)
    return None if accum is None else Layout(gpus, micro, sequence, accum)


def layout_memory(inputs: PlanInputs, layout: Layout) -> RankMemory:
    cfg = inputs.cfg
    acts = activation_memory(
        cfg.model,
        inputs.shape,
        inputs.tokens,
        micro_batch=layout.micro_batch,
        sequence=layout.sequence,
        compute_bytes=compute_bytes(cfg.train.precision),
        backend=inputs.backend,
    )
    with_sequence = replace(cfg, parallel=replace(cfg.parallel, sequence=layout.sequence))
    return rank_memory(inputs.inventory, with_sequence, layout.gpus, acts, inputs.on_gpu)


@dataclass(frozen=True)
class StepTime:
    compute_s: float  # model FLOPs of the rank's samples at plan.achieved_tflops
    zero_comm_s: float  # ZeRO's collectives: prefetched and overlapped with compute
    exposed_comm_s: float  # of which cannot overlap: each micro batch's first gather and last gradient bucket
    sequence_comm_s: float  # the sequence-parallel all-to-alls: on the critical path
    wire_bytes: int  # bytes this rank sends per step
    traffic: list[Traffic]

    @property
    def step_s(self) -> float:
        hidden = self.zero_comm_s - self.exposed_comm_s
        return max(self.compute_s, hidden) + self.exposed_comm_s + self.sequence_comm_s

    @property
    def comm_s(self) -> float:
        return self.zero_comm_s + self.sequence_comm_s

    @property
    def comm_dominates(self) -> bool:
        return self.comm_s > self.compute_s


def layout_time(inputs: PlanInputs, layout: Layout, tflops: float | None = None) -> StepTime:
    cfg = inputs.cfg
    tflops = tflops or cfg.plan.achieved_tflops
    samples = layout.micro_batch * layout.grad_accum / layout.sequence  # per GPU: a sample splits over P
    compute = inputs.flops.training * samples / (tflops * 1e12)
    traffic = step_traffic(
        inputs.inventory,
        cfg,
        inputs.tokens,
        world=layout.gpus,
        micro_batch=layout.micro_batch,
        sequence=layout.sequence,
        grad_accum=layout.grad_accum,
    )
    times = comm_time(traffic, cfg, inputs.gpus_per_node, layout.grad_accum)
    return StepTime(compute, times.zero_s, times.exposed_s, times.sequence_s, times.wire_bytes, traffic)


def usable_memory(device_bytes: int, cfg: CineSceneConfig) -> int:
    """Device memory the plan may fill: less the fragmentation share and the fixed reserve (plan.*)."""
    return int(device_bytes * (1 - cfg.plan.fragmentation) - cfg.plan.reserve_gb * 1e9)


def sequence_degrees(cfg: CineSceneConfig, gpus: int, gpus_per_node: int) -> list[int]:
    """Sequence-parallel degrees the model and the GPUs allow: divisors of the heads and of the GPU count,
    within a node (the all-to-alls would otherwise cross the slow links)."""
    heads = cfg.model.num_heads
    return [p for p in range(1, min(gpus, gpus_per_node, heads) + 1) if heads % p == 0 and gpus % p == 0]


@dataclass(frozen=True)
class Fit:
    usable: int
    configured: Layout | None
    configured_memory: RankMemory | None
    best: Layout | None  # the smallest sequence degree that fits, with the largest micro batch there
    best_memory: RankMemory | None
    fixes: list[str]  # overrides that each make the configured layout fit (empty when it fits)
    possible: bool  # whether any micro batch and sequence-parallel degree divides the batch over the GPUs

    @property
    def configured_fits(self) -> bool:
        return self.configured_memory is not None and self.configured_memory.peak <= self.usable


def micro_batches(cfg: CineSceneConfig, gpus: int, sequence: int) -> list[int]:
    """Micro batches the batch arithmetic allows: all up to the cap, or the divisors of the global batch."""
    dp = gpus // sequence
    total = cfg.train.global_batch_size
    limit = MAX_MICRO_BATCH if total is None else min(MAX_MICRO_BATCH, total // dp)
    return [m for m in range(1, limit + 1) if grad_accum_for(cfg, gpus, m, sequence) is not None]


def _largest_micro_batch(
    inputs: PlanInputs, gpus: int, sequence: int, usable: int
) -> tuple[Layout, RankMemory] | None:
    best = None
    for micro in micro_batches(inputs.cfg, gpus, sequence):  # memory grows with the micro batch
        layout = Layout(gpus, micro, sequence, grad_accum_for(inputs.cfg, gpus, micro, sequence))
        memory = layout_memory(inputs, layout)
        if memory.peak > usable:
            break
        best = (layout, memory)
    return best


def fit(inputs: PlanInputs, gpus: int, device_bytes: int) -> Fit:
    cfg = inputs.cfg
    usable = usable_memory(device_bytes, cfg)
    configured = configured_layout(cfg, gpus)
    configured_memory = layout_memory(inputs, configured) if configured else None
    best, degrees = None, sequence_degrees(cfg, gpus, inputs.gpus_per_node)
    for sequence in degrees:
        best = _largest_micro_batch(inputs, gpus, sequence, usable)
        if best:
            break
    fixes = []
    if configured_memory is None or configured_memory.peak > usable:
        fixes = _fixes(inputs, gpus, usable)
    return Fit(
        usable=usable,
        configured=configured,
        configured_memory=configured_memory,
        best=best[0] if best else None,
        best_memory=best[1] if best else None,
        fixes=fixes,
        possible=any(micro_batches(cfg, gpus, sequence) for sequence in degrees),
    )


def _fits_with(inputs: PlanInputs, cfg: CineSceneConfig, gpus: int, usable: int) -> bool:
    """Whether the layout ``cfg`` asks for fits; ``cfg`` differs from the prepared one in settings the
    parameter inventory does not depend on."""
    layout = configured_layout(cfg, gpus)
    return layout is not None and layout_memory(replace(inputs, cfg=cfg), layout).peak <= usable


def _fixes(inputs: PlanInputs, gpus: int, usable: int) -> list[str]:
    """Single overrides under which the configured layout fits, cheapest first."""
    cfg, fixes = inputs.cfg, []
    train, par = cfg.train, cfg.parallel
    for sequence in sequence_degrees(cfg, gpus, inputs.gpus_per_node):
        wider = replace(cfg, parallel=replace(par, sequence=sequence))
        if sequence > par.sequence and _fits_with(inputs, wider, gpus, usable):
            fixes.append(f"parallel.sequence={sequence}")
            break
    for micro in range(train.micro_batch_size - 1, 0, -1):
        if _fits_with(inputs, replace(cfg, train=replace(train, micro_batch_size=micro)), gpus, usable):
            fixes.append(f"train.micro_batch_size={micro}")
            break
    if not cfg.model.activation_checkpointing:
        model = replace(cfg.model, activation_checkpointing=True)
        if _fits_with(inputs, replace(cfg, model=model), gpus, usable):
            fixes.append("model.activation_checkpointing=true")
    if par.zero_stage == 3 and par.offload_optimizer == "none":
        offload = replace(cfg, parallel=replace(par, offload_optimizer="cpu"))
        if _fits_with(inputs, offload, gpus, usable):
            fixes.append("parallel.offload_optimizer=cpu")
    more = gpus * 2
    while more <= 4096 and par.zero_stage == 3:
        if _fits_with(inputs, cfg, more, usable):
            fixes.append(f"{more} GPUs")
            break
        more *= 2
    return fixes
