"""`cinescene train CONFIG [overrides] [--nproc N]`."""

from __future__ import annotations

import argparse

from .common import add_config_args, with_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune the model (local ranks, torchrun, deepspeed or srun)",
        description="Flow-matching fine-tuning under DeepSpeed. Resumes by itself "
        "from <run.dir>/checkpoints/latest. Exit status 124 "
        "(launch.preempt_exit_code) after a preemption save.",
    )
    add_config_args(p)
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="local ranks to spawn when not already under torchrun/srun (launch.nproc)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything up to building the engine, for --nproc ranks (or the launcher's world "
        "size), without data and without allocating the model; print what was checked",
    )
    p.set_defaults(func=run)


@with_config
def run(args: argparse.Namespace, cfg) -> int:
    from cinescene.config.base import require
    from cinescene.config.paths import check_run_locations

    require(args.nproc is None or args.nproc >= 1, "--nproc", "a value >= 1", args.nproc)
    check_run_locations(cfg)
    if args.dry_run:
        return dry_run(cfg, args.nproc)
    from cinescene.train.launcher import launch

    return launch(cfg, config_path=args.config, overrides=args.overrides, nproc=args.nproc)


def dry_run(cfg, nproc) -> int:
    """``--dry-run``: the checks of :func:`cinescene.train.preflight.dry_run`, printed; 0 when all pass."""
    import os
    import sys

    import torch

    from cinescene.distributed.env import detect
    from cinescene.log import setup_logging
    from cinescene.train.preflight import dry_run as check
    from cinescene.train.preflight import format_checks

    env = detect()
    world_size = env.world_size if env is not None else (nproc or cfg.launch.nproc)
    if env is not None and env.rank != 0:
        return 0  # under torchrun/srun every rank would print the same
    if not torch.cuda.is_available():
        # DeepSpeed's own choice without CUDA, made explicit so its import prints no notice on the console.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    setup_logging(cfg.run.log_level)
    # Without a launcher the ranks would be spawned here: like the real launch, they must fit this machine.
    local = None if env is not None else ("launch.nproc" if nproc is None else "--nproc")
    checks = check(cfg, world_size, local_ranks_key=local)
    sys.stdout.write(format_checks(checks))
    waiting = [c.what for c in checks if not c.ready]
    print(
        f"dry run passed: `cinescene train` would build the engine on {world_size} rank(s)"
        + (
            f" once the {' and the '.join(waiting)} {'are' if len(waiting) > 1 else 'is'} ready"
            if waiting
            else ""
        )
    )
    return 0
