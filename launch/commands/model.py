"""`cinescene model info CONFIG [--json]`."""
from __future__ import annotations

import argparse

from .common import add_config_args, not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model facts: parameters, sequence length, FLOPs",
                       description="Inspect a model config without allocating its weights.")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = msub.add_parser("info", help="parameter counts, extended sequence length, FLOPs per sample")
    add_config_args(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=not_landed("`cinescene model info`", "the model"))
