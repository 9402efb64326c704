"""One plan: a config on N GPUs of a given memory, everything `cinescene plan` prints."""

from __future__ import annotations

from dataclasses import dataclass

from cinescene.config.schema import CineSceneConfig

from .activations import batch_bytes
from .budget import PreemptionBudget, preemption_budget
from .memory import RankMemory, compute_bytes, deepspeed_estimate
from .planner import Fit, Layout, PlanInputs, StepTime, fit, layout_time, prepare
from .scaling import ScalingRow, communication_dominates_from, scaling_table


@dataclass(frozen=True)
class SamplingMemory:
    """One GPU sampling with the trained model (cinescene.sampling): whole weights and the context cache."""

    weights: int
    cache_per_branch: (
        int  # context keys and values of every layer for one sample (cinescene.models.context_cache)
    )
    cacheable: bool  # the cache needs clean, read-only context


@dataclass(frozen=True)
class Plan:
    inputs: PlanInputs
    gpus: int
    device_bytes: int
    tflops: float
    fit: Fit
    layout: Layout | None  # the configured layout (None: its batch arithmetic fails on these GPUs)
    memory: RankMemory | None
    time: StepTime | None
    budget: PreemptionBudget | None
    deepspeed_estimate: int
    host_loader_bytes: int
    sampling: SamplingMemory
    scaling: list[ScalingRow]
    communication_dominates_nodes: int | None

    @property
    def cfg(self) -> CineSceneConfig:
        return self.inputs.cfg


def sampling_memory(inputs: PlanInputs) -> SamplingMemory:
    model, cb = inputs.cfg.model, compute_bytes(inputs.cfg.train.precision)
    return SamplingMemory(
        weights=cb * inputs.inventory.total,
        cache_per_branch=2 * model.num_layers * inputs.tokens.context * model.dim * cb,
        cacheable=model.attention.mask == "context_readonly" and model.scene.timestep == "clean",
    )


def build_plan(
    cfg: CineSceneConfig,
    gpus: int,
    device_bytes: int,
    *,
    tflops: float | None = None,
    on_gpu: bool = True,
    inputs: PlanInputs | None = None,
) -> Plan:
    inputs = inputs or prepare(cfg, on_gpu=on_gpu)
    tflops = tflops or cfg.plan.achieved_tflops
    found = fit(inputs, gpus, device_bytes)
    layout = found.configured
    timed = layout or found.best
    step = layout_time(inputs, layout, tflops) if layout else None
    budget = (
        preemption_budget(inputs.inventory, cfg, gpus, inputs.gpus_per_node, step.step_s) if step else None
    )
    loader_batches = 2 * cfg.data.num_workers + 1  # prefetch_factor 2 per worker, and the batch in use
    return Plan(
        inputs=inputs,
        gpus=gpus,
        device_bytes=device_bytes,
        tflops=tflops,
        fit=found,
        layout=layout,
        memory=found.configured_memory,
        time=step,
        budget=budget,
        deepspeed_estimate=deepspeed_estimate(inputs.inventory, gpus),
        host_loader_bytes=loader_batches
        * cfg.train.micro_batch_size
        * batch_bytes(cfg.model, inputs.shape, inputs.tokens, noised=False),
        sampling=sampling_memory(inputs),
        scaling=scaling_table(inputs, timed, tflops) if timed else [],
        communication_dominates_nodes=communication_dominates_from(inputs, timed, tflops) if timed else None,
    )
