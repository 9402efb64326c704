"""`cinescene sweep SWEEP.yaml`: a grid of runs as a SLURM job array."""
from __future__ import annotations

import argparse

from .common import add_config_args, load, not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="launch a sweep as a SLURM job array, and show its status",
                       description="Expand a sweep config into runs and submit them as one job array.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if load(args) is None:
        return 0
    return not_landed("`cinescene sweep`", "the SLURM launcher")(args)
