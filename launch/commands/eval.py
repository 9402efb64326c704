"""`cinescene eval CONFIG [overrides]`: metrics on held-out clips."""
from __future__ import annotations

import argparse

from .common import add_pending_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_pending_command(sub, "eval", help="evaluate a checkpoint (camera, scene and quality metrics)",
                        description="Sample held-out clips and compute the paper's metrics.",
                        needs="the evaluation issue")
