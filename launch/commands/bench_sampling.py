"""`cinescene bench sampling CONFIG [overrides] [--steps N] [--out FILE]`: sampling with vs without the
context K/V cache on the same noise (time, speed-up, max difference). Library code: cinescene.sampling.bench.

Imports stay light (argparse only): torch and the model load inside the handler.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_config_args, with_config

DTYPES = ("bf16", "fp16", "fp32")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sampling",
        help="sampling with vs without the context K/V cache",
        description="Builds CONFIG's model with random weights, makes a synthetic batch at the configured "
        "data shape, and samples N steps with and without the context K/V cache from the same noise: "
        "prints the time of each run, the speed-up and the max difference of the outputs. The cache "
        "needs model.attention.mask=context_readonly and model.scene.timestep=clean; overrides the "
        "config lacks for that are applied and printed.",
    )
    add_config_args(p)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: eval.sample_steps)")
    p.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when visible)")
    p.add_argument(
        "--dtype", choices=DTYPES, default=None, help="parameter dtype (default: bf16 on CUDA, fp32 on CPU)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cache-offload",
        action="store_true",
        help="the cached run keeps the context keys/values in host memory, streamed in per layer "
        "(for caches the device cannot hold; measures what the streaming costs)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (shapes, tokens, cache memory, overrides) and exit without building the model",
    )
    p.set_defaults(func=run)


@with_config
def run(args: argparse.Namespace, cfg) -> int:
    import torch

    from cinescene.config import load_config
    from cinescene.config.base import require
    from cinescene.log import setup_logging
    from cinescene.sampling import bench

    added = bench.cache_overrides(cfg)
    if added:
        print(f"the context cache needs {' '.join(added)}: applied on top of {args.config}")
        cfg, _ = load_config(args.config, list(args.overrides) + added)
    steps = cfg.eval.sample_steps if args.steps is None else args.steps
    require(steps >= 1, "--steps", "a value >= 1", steps)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    require(
        torch.device(device).type != "cuda" or torch.cuda.is_available(),
        "--device",
        "cpu (no CUDA GPU is visible)",
        device,
    )
    dtype_name = args.dtype or ("bf16" if torch.device(device).type == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    setup_logging(cfg.run.log_level)
    the_plan = bench.plan(cfg, steps, device, dtype)
    print(the_plan.describe(), flush=True)
    if args.dry_run:
        return 0
    report = bench.run_benchmark(cfg, steps, device, dtype, seed=args.seed, offload=args.cache_offload)
    report.update(config=str(args.config), overrides=list(args.overrides) + added, applied_for_cache=added)
    print(bench.format_report(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.out}")
    return 0
