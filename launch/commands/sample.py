"""`cinescene sample CONFIG ...`: generate videos from a checkpoint."""
from __future__ import annotations

import argparse

from .common import add_config_args, load, not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate videos with a camera trajectory and scene images",
                       description="Euler flow-matching sampling with classifier-free guidance.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if load(args) is None:
        return 0
    return not_landed("`cinescene sample`", "the sampling CLI")(args)
