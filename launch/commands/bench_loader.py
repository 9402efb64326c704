"""`cinescene bench loader`: loader samples/s against the rate a training step consumes."""
from __future__ import annotations

import argparse

from .common import not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loader", help="loader samples/s against the training step's rate")
    p.set_defaults(func=not_landed("`cinescene bench loader`", "the data pipeline"))
