"""`cinescene bench checkpoint`: checkpoint save/load throughput against dd on the same disk, loop blocked
time, export peak memory. Library code: cinescene.train.checkpoint_bench, imported once the flags are
checked (parsing imports no torch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .ckpt import parse_size


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "checkpoint",
        help="checkpoint save/load throughput vs dd, loop blocked time, export memory",
        description="Trains one step of a CineScene DiT sized to --state-gb of fp32 optimizer state under "
        "ZeRO-3 on --nproc local ranks, saves a checkpoint the way the trainer does, resumes it into a new "
        "engine, exports it, and times dd writing and reading a file of the same size in the same "
        "directory. Prints seconds, GB/s and the ratio to dd.",
    )
    p.add_argument(
        "--state-gb",
        type=float,
        default=1.0,
        help="fp32 weights + Adam moments to checkpoint, in GB (default 1.0)",
    )
    p.add_argument("--nproc", type=int, default=2, help="local ranks (default 2)")
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("runs/bench-checkpoint"),
        help="where the checkpoint and dd's file go: the disk being measured (default runs/bench-checkpoint)",
    )
    p.add_argument(
        "--export-shard",
        type=parse_size,
        default="100MB",
        help="--max-shard-size of the export whose peak memory is measured (default 100MB)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="rounds of save, dd write, load, dd read (median; default 3)"
    )
    p.add_argument("--keep", action="store_true", help="keep the checkpoint afterwards")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.config.base import require

    require(args.state_gb > 0, "--state-gb", "a value > 0", args.state_gb)
    require(args.nproc >= 1, "--nproc", "a value >= 1", args.nproc)
    require(args.repeats >= 1, "--repeats", "a value >= 1", args.repeats)
    from cinescene.log import setup_logging
    from cinescene.train.checkpoint_bench import format_report
    from cinescene.train.checkpoint_bench import run as bench

    setup_logging("WARNING")
    report = bench(
        state_gb=args.state_gb,
        nproc=args.nproc,
        directory=args.dir,
        export_shard=args.export_shard,
        repeats=args.repeats,
        keep=args.keep,
    )
    print(
        json.dumps(report, sort_keys=True) if args.json else format_report(report),
        end="\n" if args.json else "",
    )
    return 0
