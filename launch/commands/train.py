"""`cinescene train CONFIG [overrides] [--nproc N]`."""
from __future__ import annotations

import argparse

from .common import add_config_args, with_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune the model (local ranks, torchrun, deepspeed or srun)",
                       description="Flow-matching fine-tuning under DeepSpeed. Resumes by itself "
                                   "from <run.dir>/checkpoints/latest. Exit status 124 "
                                   "(launch.preempt_exit_code) after a preemption save.")
    add_config_args(p)
    p.add_argument("--nproc", type=int, default=None,
                   help="local ranks to spawn when not already under torchrun/srun (launch.nproc)")
    p.set_defaults(func=run)


@with_config
def run(args: argparse.Namespace, cfg) -> int:
    from cinescene.config.base import require

    require(args.nproc is None or args.nproc >= 1, "--nproc", "a value >= 1", args.nproc)
    from cinescene.train.launcher import launch

    return launch(cfg, config_path=args.config, overrides=args.overrides, nproc=args.nproc)
