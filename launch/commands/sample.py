"""`cinescene sample CONFIG [overrides]`: generate videos from a checkpoint."""
from __future__ import annotations

import argparse

from .common import add_pending_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_pending_command(sub, "sample", help="generate videos with a camera trajectory and scene images",
                        description="Euler flow-matching sampling with classifier-free guidance.",
                        needs="the sampling CLI")
