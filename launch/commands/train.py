"""`cinescene train CONFIG [overrides] [--nproc N]`."""
from __future__ import annotations

import argparse

from .common import add_config_args, load, not_landed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune the model (local ranks, torchrun, deepspeed or srun)",
                       description="Flow-matching fine-tuning under DeepSpeed. Resumes by itself "
                                   "from <run.dir>/checkpoints/latest.")
    add_config_args(p)
    p.add_argument("--nproc", type=int, default=None,
                   help="local ranks to spawn when not already under torchrun/srun (launch.nproc)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load(args)
    if loaded is None:
        return 0
    return not_landed("`cinescene train`", "the trainer")(args)
