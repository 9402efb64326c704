"""`cinescene bench loader`: loader samples/s against the rate a training step consumes."""

from __future__ import annotations

import argparse
import json

from .common import add_config_args, with_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loader",
        help="loader samples/s against the training step's rate",
        description="Times the training loader of CONFIG (rank 0) for several DataLoader worker "
        "counts and compares with micro_batch_size x grad_accum / step time. Prepares "
        "synthetic data first when data.generate is on. --against times a second copy of the "
        "same shards (object storage against local disk) in the same run.",
    )
    add_config_args(p)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to time")
    p.add_argument("--batches", type=int, default=20, help="micro-batches timed per worker count")
    p.add_argument(
        "--step-time",
        type=float,
        default=None,
        help="seconds per optimizer step (default: measure the model's forward+backward)",
    )
    p.add_argument("--world", type=int, default=None, help="data-parallel ranks (default: launch.nproc)")
    p.add_argument(
        "--against",
        metavar="SHARDS",
        default=None,
        help="a second copy of the same shards (e.g. s3://bucket/prefix), timed in the same run",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


@with_config
def run(args: argparse.Namespace, cfg) -> int:
    from cinescene.config.base import require
    from cinescene.config.data import OBJECT_URL_SCHEME, check_object_url

    require(args.batches >= 1, "--batches", "a value >= 1", args.batches)
    require(all(w >= 0 for w in args.workers), "--workers", "values >= 0", args.workers)
    require(args.step_time is None or args.step_time > 0, "--step-time", "a value > 0", args.step_time)
    from cinescene.data.bench import bench_loader, format_bench
    from cinescene.log import setup_logging

    setup_logging(cfg.run.log_level)
    if args.against is not None and args.against.startswith(OBJECT_URL_SCHEME):
        check_object_url(args.against, "--against")
    result = bench_loader(cfg, args.workers, args.batches, args.step_time, args.world, args.against)
    print(json.dumps(result, sort_keys=True) if args.json else format_bench(result))
    return 0
