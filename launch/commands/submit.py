"""`cinescene submit CONFIG [overrides] [--nodes N ...] [--dry-run]`: one training run as a SLURM job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_config_args

# Flag -> the launch.slurm key it overrides (flags win over the config's keys).
FLAGS = {"nodes": int, "gpus_per_node": int, "partition": str, "time": str, "account": str, "qos": str}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a training run to SLURM as a job that requeues itself",
        description="Submit `cinescene train CONFIG [overrides]` with sbatch: one rank per task "
        "(per GPU; launch.nproc per node without GPUs), resources from launch.slurm, "
        "a warning signal before the time limit, requeue after a preemption save. "
        "Logs go to <run.dir>/slurm/.",
    )
    add_config_args(p)
    for name, kind in FLAGS.items():
        p.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=None, dest=name, help=f"launch.slurm.{name}"
        )
    p.add_argument(
        "--dry-run", action="store_true", help="print the sbatch call and the batch script, submit nothing"
    )
    p.set_defaults(func=run)


def flag_overrides(args: argparse.Namespace) -> list:
    """The flags that were given, as launch.slurm overrides (appended after the user's)."""
    from cinescene.config.sweep import as_override

    return [
        as_override(f"launch.slurm.{name}", getattr(args, name))
        for name in FLAGS
        if getattr(args, name) is not None
    ]


def _warn_about_the_preemption_budget(cfg) -> None:
    """One line when launch.slurm.signal's lead is shorter than a step and a save (cinescene.plan)."""
    from cinescene.log import console
    from cinescene.plan import preemption_warning
    from cinescene.slurm.sbatch import tasks_per_node

    warning = preemption_warning(cfg, cfg.launch.slurm.nodes * tasks_per_node(cfg.launch))
    if warning:
        print(f"cinescene submit: warning: {warning}", file=console())


def run(args: argparse.Namespace) -> int:
    from cinescene.config import load_config, to_yaml
    from cinescene.errors import CineSceneError
    from cinescene.slurm import sbatch
    from cinescene.slurm.accounting import LIVE_STATES, job_states
    from cinescene.slurm.records import job_log_dir, record_job, recorded_jobs

    overrides = [*args.overrides, *flag_overrides(args)]
    cfg, raw = load_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(to_yaml(raw))
        return 0
    run_dir = Path(cfg.run.dir)
    _warn_about_the_preemption_budget(cfg)
    submission = sbatch.build(
        cfg.launch,
        job_name=cfg.run.name,
        output=sbatch.log_pattern(job_log_dir(run_dir), "%j.out"),
        job_args=[args.config, *overrides],
    )
    if args.dry_run:
        sys.stdout.write(submission.describe())
        return 0
    last = (recorded_jobs(run_dir) or [None])[-1]
    state = job_states([last]).get(last) if last else None
    if state in LIVE_STATES:
        raise CineSceneError(
            f"{run_dir} already has job {last} ({state}); one job per run directory "
            f"(scancel {last} first, or choose another run.dir)"
        )
    job_log_dir(run_dir).mkdir(parents=True, exist_ok=True)
    job_id = sbatch.submit(submission)
    record_job(run_dir, job_id)
    print(
        f"submitted job {job_id}: {cfg.run.name} in {run_dir}, log {job_log_dir(run_dir) / f'{job_id}.out'}"
    )
    return 0
