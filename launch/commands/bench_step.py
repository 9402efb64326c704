"""`cinescene bench step`: real training steps at the configured shape, timed, with the plan's figures beside.

Library code: cinescene.train.bench_step. Imports stay light: torch loads in the ranks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_config_args, with_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "step",
        help="time real training steps (random weights and batch) and compare memory with the plan",
        description="Builds the engine of CONFIG on --nproc local ranks (random weights, a random batch at "
        "the configured shape, no data loading), runs --warmup steps, then times --steps steps of "
        "forward, backward and optimizer. Prints step time, tokens/s, achieved TFLOP/s and MFU, the "
        "memory a step takes next to `cinescene plan`'s figure for the same config (measured/planned), "
        "and one step's communication next to the plan's.",
    )
    add_config_args(p)
    p.add_argument("--nproc", type=int, default=None, help="local ranks (default: launch.nproc)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median; default 3)")
    p.add_argument("--accum", type=int, default=1, help="micro batches per step and rank (default 1)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench-step"),
        help="where the figures (bench_step.json) and the ranks' logs go (default runs/bench-step)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


@with_config
def run(args: argparse.Namespace, cfg) -> int:
    from cinescene.config.base import require
    from cinescene.train.launcher import check_local_ranks

    nproc = args.nproc or cfg.launch.nproc
    require(nproc >= 1, "--nproc", "a value >= 1", nproc)
    require(
        args.warmup >= 1, "--warmup", "a value >= 1 (the first step builds the optimizer state)", args.warmup
    )
    require(args.steps >= 1, "--steps", "a value >= 1", args.steps)
    require(args.accum >= 1, "--accum", "a value >= 1", args.accum)
    require(
        nproc % cfg.parallel.sequence == 0,
        "--nproc",
        f"a multiple of parallel.sequence={cfg.parallel.sequence}",
        nproc,
    )
    check_local_ranks(nproc, cfg.parallel.backend, "--nproc" if args.nproc else "launch.nproc")
    from cinescene.log import setup_logging
    from cinescene.train.bench_step import format_report
    from cinescene.train.bench_step import run as bench

    setup_logging(cfg.run.log_level)
    report = bench(
        config=args.config,
        overrides=list(args.overrides),
        nproc=nproc,
        warmup=args.warmup,
        steps=args.steps,
        accum=args.accum,
        out=args.out,
    )
    print(
        json.dumps(report, sort_keys=True) if args.json else format_report(report),
        end="\n" if args.json else "",
    )
    return 0
