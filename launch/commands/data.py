"""`cinescene data synth|convert|prepare|inspect`."""
from __future__ import annotations

import argparse

from .common import not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthesize, convert, prepare and inspect training data",
                       description="Data tools: synthetic renderer, dataset converter, shard writer.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, text in [("synth", "render synthetic scene-decoupled clips"),
                       ("convert", "convert the Scene-Decoupled Video dataset layout"),
                       ("prepare", "encode clips into webdataset shards"),
                       ("inspect", "summarise shards; contact sheet PNG")]:
        d = dsub.add_parser(name, help=text)
        d.set_defaults(func=not_landed(f"`cinescene data {name}`", "the data pipeline"))
