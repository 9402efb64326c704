"""`cinescene bench attention`: fused attention vs torch SDPA / flash-attn."""
from __future__ import annotations

import argparse

from .common import not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="fused attention vs torch SDPA / flash-attn")
    p.set_defaults(func=not_landed("`cinescene bench attention`", "the kernels"))
