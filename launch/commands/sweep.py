"""`cinescene sweep CONFIG [overrides]`: a grid of runs as a SLURM job array."""
from __future__ import annotations

import argparse

from .common import add_pending_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_pending_command(sub, "sweep", help="launch a sweep as a SLURM job array, and show its status",
                        description="Expand a sweep config into runs and submit them as one job array.",
                        needs="the SLURM launcher")
