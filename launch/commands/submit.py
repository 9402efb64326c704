"""`cinescene submit CONFIG [overrides]`: sbatch/submitit submission."""
from __future__ import annotations

import argparse

from .common import add_config_args, load, not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a training job to SLURM (sbatch/submitit)",
                       description="Submit `cinescene train` as a requeueable SLURM job.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if load(args) is None:
        return 0
    return not_landed("`cinescene submit`", "the SLURM launcher")(args)
