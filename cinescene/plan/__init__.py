"""`cinescene plan`: memory, fit, step time and communication of a config, in closed form (docs/PLAN.md).

Public API:

- :func:`build_plan` (config, GPU count, device memory) -> :class:`Plan`;
  :func:`format_plan` / :func:`plan_dict` print it;
- :func:`checkpoint_bytes` -- what rank ``r`` of ``world`` writes per checkpoint;
- :func:`fit_warning` / :func:`preemption_warning` -- the one-line checks of
  `cinescene train` (start-up) and `cinescene submit`.

Below the trainer in the layering: it reads configs and builds the model on
the meta device, nothing else.
"""

from __future__ import annotations

from cinescene.config.schema import CineSceneConfig

from .budget import checkpoint_bytes_per_rank
from .build import Plan, build_plan
from .checks import fit_warning, preemption_warning
from .planner import prepare
from .report import format_plan, plan_dict


def checkpoint_bytes(cfg: CineSceneConfig, world: int, rank: int = 0) -> int:
    """Bytes rank ``rank`` of ``world`` writes into one checkpoint of ``cfg``'s run (.budget's module doc)."""
    inventory = prepare(cfg, on_gpu=False).inventory
    return checkpoint_bytes_per_rank(inventory, cfg, world, rank)


__all__ = [
    "Plan",
    "build_plan",
    "checkpoint_bytes",
    "fit_warning",
    "format_plan",
    "plan_dict",
    "preemption_warning",
]
