"""`cinescene bench checkpoint`: checkpoint save/load throughput against dd on the same disk, the loop's
blocked time with and without checkpoint.async, export peak memory. Library code:
cinescene.train.checkpoint_bench, imported once the flags are checked (parsing imports no torch); the
trainer's side (DeepSpeed) loads in the ranks only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .ckpt import parse_size


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "checkpoint",
        help="checkpoint save/load throughput vs dd, loop blocked time (sync and async), export memory",
        description="Trains one step of a CineScene DiT sized to --state-gb of fp32 optimizer state "
        "under ZeRO-3 on --nproc local ranks, then each round saves a checkpoint the way the trainer "
        "does, synchronously and with checkpoint.async (the loop's blocked time, the background write), "
        "resumes it into a new engine, and times dd writing and reading a file of the same size in the "
        "same directory; exports the last one. Prints seconds, GB/s, the ratio to dd and the async host "
        "copy's memory. Works in a new bench-checkpoint-* directory under --dir and touches nothing else "
        "there.",
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
        help="the disk being measured: the checkpoint and dd's file go into a new bench-checkpoint-* "
        "directory under it (default runs/bench-checkpoint)",
    )
    p.add_argument(
        "--export-shard",
        type=parse_size,
        default="100MB",
        help="--max-shard-size of the export whose peak memory is measured (default 100MB)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=4,
        help="rounds of three saves and a dd write (each in every position of a round once per 4 rounds), "
        "load, dd read (median; default 4)",
    )
    p.add_argument("--keep", action="store_true", help="keep the benchmark's run directory (path printed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.config.base import require

    require(args.state_gb > 0, "--state-gb", "a value > 0", args.state_gb)
    require(args.nproc >= 1, "--nproc", "a value >= 1", args.nproc)
    require(args.repeats >= 1, "--repeats", "a value >= 1", args.repeats)
    from cinescene.log import console_out, setup_logging
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
        file=console_out(),  # stdout may have gone to the benchmark's log
    )
    return 0
