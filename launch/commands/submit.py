"""`cinescene submit CONFIG [overrides]`: sbatch/submitit submission."""
from __future__ import annotations

import argparse

from .common import add_pending_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_pending_command(sub, "submit", help="submit a training job to SLURM (sbatch/submitit)",
                        description="Submit `cinescene train` as a requeueable SLURM job.",
                        needs="the SLURM launcher")
