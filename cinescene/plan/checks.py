"""The plan's one-line checks: `cinescene train`'s memory check at start-up, `cinescene submit`'s preemption
budget. Each returns the warning's text, or None when there is nothing to say."""

from __future__ import annotations

from cinescene.config.schema import CineSceneConfig

from .budget import preemption_budget
from .planner import configured_layout, fit, layout_time, prepare


def fit_warning(cfg: CineSceneConfig, world: int, device_bytes: int, device_name: str = "GPU") -> str | None:
    """Why the configured layout will not fit ``device_bytes`` per rank, with what would; None if it fits."""
    inputs = prepare(cfg, on_gpu=True)
    found = fit(inputs, world, device_bytes)
    if found.configured_fits or found.configured is None:  # no layout: the batch check has said why
        return None
    peak = found.configured_memory.peak
    fixes = f"each of these fits: {', '.join(found.fixes)}" if found.fixes else "no single change fits"
    return (
        f"the plan says this run does not fit the {device_name}: {peak / 1e9:.1f} GB per rank at its peak, "
        f"{found.usable / 1e9:.1f} GB usable of {device_bytes / 1e9:.1f} GB ({fixes}; details: "
        f"cinescene plan CONFIG --gpus {world} --gpu-memory {device_bytes}B)"
    )


def preemption_warning(cfg: CineSceneConfig, world: int) -> str | None:
    """Why ``launch.slurm.signal``'s lead is too short for a step and a save (cinescene.plan.budget); None if
    it is long enough."""
    inputs = prepare(cfg, on_gpu=True)
    layout = configured_layout(cfg, world)
    if layout is None:
        return None
    step = layout_time(inputs, layout)
    budget = preemption_budget(inputs.inventory, cfg, world, inputs.gpus_per_node, step.step_s)
    if budget.fits:
        return None
    slurm = cfg.launch.slurm
    signal = slurm.signal.partition("@")[0]
    return (
        f"launch.slurm.signal={slurm.signal} warns {budget.lead_s} s before the time limit, but a save of "
        f"{budget.node_bytes / 1e9:.1f} GB per node takes about {budget.save_s:.0f} s at "
        f"plan.checkpoint_write_gbps={cfg.plan.checkpoint_write_gbps:g} GB/s after up to one step of "
        f"{budget.step_s:.0f} s (at plan.achieved_tflops={cfg.plan.achieved_tflops:g}): the job may be "
        f"killed mid-save; set launch.slurm.signal={signal}@{int(budget.needed_s * 1.5) + 60} or more"
    )
