"""`cinescene slurm-job CONFIG [overrides] | --array-table FILE`: the batch side of a SLURM job.

What ``slurm/train.sbatch`` runs (so also `cinescene submit` and `cinescene
sweep`): one start of the job -- srun one rank per task, requeue the job when the
ranks saved after a preemption signal. See :mod:`cinescene.slurm.job`.
"""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "slurm-job",
        help="the batch script's side of a SLURM job (run by slurm/train.sbatch)",
        description="Run inside a SLURM batch job: start one `cinescene train` rank per task "
        "with srun, record the environment of this start in <run.dir>/slurm/, and "
        "requeue the job after a preemption save (at most launch.max_restarts times).",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config (omit with --array-table)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="OmegaConf dotlist overrides")
    p.add_argument(
        "--array-table",
        metavar="FILE",
        help="a sweep's array table: this array task trains entry $SLURM_ARRAY_TASK_ID",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cinescene.config import load_config
    from cinescene.config.base import require
    from cinescene.errors import CineSceneError
    from cinescene.slurm.job import run_job

    if args.array_table:
        from cinescene.slurm.sweeps import array_task

        require(
            args.config is None and not args.overrides,
            "--array-table",
            "no CONFIG or overrides beside it (the table holds them)",
            args.config,
        )
        task = os.environ.get("SLURM_ARRAY_TASK_ID", "")
        if not task.isdigit():
            raise CineSceneError("--array-table needs SLURM_ARRAY_TASK_ID: submit it as a job array")
        config, *overrides = array_task(Path(args.array_table), int(task))
    else:
        require(args.config is not None, "CONFIG", "a training config (or --array-table FILE)", None)
        config, overrides = args.config, list(args.overrides)
    cfg, _ = load_config(config, overrides)
    return run_job(cfg, config, overrides)
