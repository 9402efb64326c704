"""`cinescene ckpt ...`: inspect, reshard and export checkpoints."""
from __future__ import annotations

import argparse

from .common import not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ckpt", help="inspect, reshard and export checkpoints",
                       description="Checkpoint tools: inspect, export consolidated safetensors.")
    p.add_argument("path", nargs="?", help="a run directory or checkpoint step directory")
    p.set_defaults(func=not_landed("`cinescene ckpt`", "the checkpoint tools"))
