"""`cinescene eval CONFIG ...`: metrics on held-out clips."""
from __future__ import annotations

import argparse

from .common import add_config_args, load, not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (camera, scene and quality metrics)",
                       description="Sample held-out clips and compute the paper's metrics.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if load(args) is None:
        return 0
    return not_landed("`cinescene eval`", "the evaluation issue")(args)
