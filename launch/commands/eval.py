"""`cinescene eval CKPT --data SHARDS --out DIR [--num N --steps S --metrics a,b]`: the paper's metrics."""

from __future__ import annotations

import argparse

from .common import CHECKPOINT_HELP, EMA_HELP, request_from


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on held-out samples (camera, scene and quality metrics)",
        description="Generate held-out samples across ranks, compute the configured metrics (eval.metrics; "
        "docs/EVAL.md) and write metrics.json, table.md, the videos and contact_sheet.png into "
        "--out. Flags override the checkpoint config's eval section.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides of the checkpoint's config, e.g. eval.clip.weights=DIR eval.sfm.trials=5",
    )
    p.add_argument("--data", default=None, help="held-out shards (default: eval.data)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--num",
        type=int,
        default=None,
        help="samples, a fixed set drawn by eval.seed (default: eval.num_samples; 0 = all held out)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: eval.sample_steps)")
    p.add_argument("--metrics", default=None, help="comma-separated metric names (default: eval.metrics)")
    p.add_argument("--ema", action="store_true", help=EMA_HELP)
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="local ranks when not under torchrun/srun (default: launch.nproc)",
    )
    p.add_argument("--device", default=None, help="torch device (default: each rank's GPU, else cpu)")
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="model precision (default: bf16 on a GPU, fp32 on the CPU)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.eval.runner import EvalRequest, launch

    return launch(request_from(args, EvalRequest))
