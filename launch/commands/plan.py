"""`cinescene plan CONFIG [overrides] --gpus N [--gpu-memory 80GB] [--tflops T] [--json] [--trace]`.

Memory per GPU, what fits, step time, communication and the preemption
budget of a config, in closed form from the config (cinescene.plan): the
model is built on the meta device only, nothing is allocated, no GPU is
needed. ``--trace`` also runs one training step of the real model with fake
tensors (minutes on a CPU) and prints the traced figures beside the planned.
"""

from __future__ import annotations

import argparse
import json
import sys

from .ckpt import parse_size
from .common import add_config_args, with_config

DEFAULT_GPU_MEMORY = "80GB"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="memory per GPU, what fits, step time and communication of a config (no GPU needed)",
        description="Per-rank peak memory broken down (ZeRO states, gathered parameters, activations under "
        "the config's checkpointing), the largest micro batch and the smallest sequence-parallel degree "
        "that fit, step time at an assumed achieved TFLOP/s, communication per step, scaling to 64 nodes "
        "and the preemption budget. From the config alone: nothing is allocated.",
    )
    add_config_args(p)
    p.add_argument("--gpus", type=_positive_int, required=True, help="GPUs the run uses (all nodes)")
    p.add_argument(
        "--gpu-memory",
        type=parse_size,
        default=DEFAULT_GPU_MEMORY,
        help=f"memory of one GPU, e.g. 80GB (decimal), 81559MiB (an H100's exact size); default "
        f"{DEFAULT_GPU_MEMORY}",
    )
    p.add_argument(
        "--tflops",
        type=_positive_float,
        default=None,
        help="achieved model TFLOP/s per GPU for the step time (default: plan.achieved_tflops)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (bytes, seconds)")
    p.add_argument(
        "--trace",
        action="store_true",
        help="also trace one real training step with fake tensors (minutes) and print it beside the plan",
    )
    p.set_defaults(func=run)


@with_config
def run(args: argparse.Namespace, cfg) -> int:
    from cinescene.config import ConfigError
    from cinescene.plan import build_plan, format_plan, plan_dict
    from cinescene.plan.planner import usable_memory

    if usable_memory(args.gpu_memory, cfg) <= 0:
        raise ConfigError(
            "--gpu-memory",
            f"{args.gpu_memory / 1e9:g} GB leaves nothing after plan.reserve_gb ({cfg.plan.reserve_gb:g} GB) "
            f"and plan.fragmentation ({cfg.plan.fragmentation:.0%})",
        )
    plan = build_plan(cfg, args.gpus, args.gpu_memory, tflops=args.tflops)
    traced = None
    if args.trace:
        from cinescene.plan.trace import trace_step

        traced = trace_step(cfg, args.gpus)
    if args.json:
        out = plan_dict(plan)
        if traced is not None:
            out["trace"] = traced.as_dict()
        print(json.dumps(out, sort_keys=True))
        return 0
    sys.stdout.write(format_plan(plan, args.config))
    if traced is not None:
        sys.stdout.write(_trace_lines(plan, traced))
    return 0


def _trace_lines(plan, traced) -> str:
    memory = plan.memory
    lines = [
        "",
        f"fake-tensor trace of one step (rank 0 of {traced.gpus}, FSDP2 + FSDPMemTracker, "
        f"{traced.seconds:.0f} s)",
        f"  activations at the peak: traced {traced.activation_bytes / 1e9:.2f} GB, planned "
        f"{memory.activations.peak / 1e9:.2f} GB ({memory.activations.peak / traced.activation_bytes:.3f}x)",
        f"  peak: traced {traced.peak_bytes / 1e9:.2f} GB, planned {memory.peak / 1e9:.2f} GB "
        f"({memory.peak / traced.peak_bytes:.3f}x)",
        "  traced categories at the peak, GB: "
        + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in traced.categories.items() if v),
    ]
    return "\n".join(lines) + "\n"
