"""`cinescene bench attention|loader|sampling|checkpoint|ablation|step`: one module per action."""

from __future__ import annotations

import argparse

from . import bench_ablation, bench_attention, bench_checkpoint, bench_loader, bench_sampling, bench_step


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: fused attention, data loader, sampling with the context cache, "
        "checkpoints, the scene ablation, a training step against the plan",
        description="Benchmarks that print figures (ratios against a baseline).",
    )
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION", required=True)
    bench_attention.add_parser(bsub)
    bench_loader.add_parser(bsub)
    bench_sampling.add_parser(bsub)
    bench_checkpoint.add_parser(bsub)
    bench_ablation.add_parser(bsub)
    bench_step.add_parser(bsub)
