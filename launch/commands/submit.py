"""`cinescene submit CONFIG [overrides] [--nodes N ...] [--dry-run]`: one training run as a SLURM job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cinescene.slurm.submitit_jobs import SUBMIT_VIA

from .common import add_config_args, print_config

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
    p.add_argument(
        "--via",
        choices=SUBMIT_VIA,
        default=SUBMIT_VIA[0],
        help="sbatch with slurm/train.sbatch (default), or submitit's executor, as cinescene.slurm.submit "
        "does from Python (same job, a submitit Job folder under <run.dir>/slurm/submitit)",
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
    from omegaconf import OmegaConf

    from cinescene.config import load_config
    from cinescene.config.paths import check_run_locations
    from cinescene.run_dir import RunDir
    from cinescene.secrets import masked_text

    overrides = [*args.overrides, *flag_overrides(args)]
    cfg, raw = load_config(args.config, overrides)
    if args.print_config:
        print_config(raw)
        return 0
    check_run_locations(cfg)
    run_dir = Path(cfg.run.dir)
    slurm_dir = RunDir(run_dir).slurm
    _warn_about_the_preemption_budget(cfg)
    if args.via == "submitit":
        return _via_submitit(args, cfg, raw, overrides)
    from cinescene.slurm import sbatch
    from cinescene.slurm.accounting import check_no_live_job
    from cinescene.slurm.records import record_job

    submission = sbatch.build(
        cfg.launch,
        job_name=cfg.run.name,
        output=sbatch.log_pattern(slurm_dir, "%j.out"),
        job_args=[args.config, *overrides],
    )
    if args.dry_run:
        sys.stdout.write(masked_text(submission.describe(), config=OmegaConf.to_container(raw)))
        return 0
    check_no_live_job(run_dir)
    slurm_dir.mkdir(parents=True, exist_ok=True)
    job_id = sbatch.submit(submission)
    record_job(run_dir, job_id)
    print(f"submitted job {job_id}: {cfg.run.name} in {run_dir}, log {RunDir(run_dir).job_log(job_id)}")
    return 0


def _via_submitit(args: argparse.Namespace, cfg, raw, overrides: list) -> int:
    """The same run through submitit's executor: what ``cinescene.slurm.submit`` does from Python."""
    from omegaconf import OmegaConf

    from cinescene.secrets import masked_text
    from cinescene.slurm import submitit_jobs

    if args.dry_run:
        ex = submitit_jobs.executor(submitit_jobs.job_folder(cfg.run.dir), cfg.launch, cfg.run.name)
        sys.stdout.write(masked_text(submitit_jobs.describe(ex), config=OmegaConf.to_container(raw)))
        return 0
    job = submitit_jobs.submit(args.config, overrides)
    print(f"submitted job {job.job_id}: {cfg.run.name} in {cfg.run.dir} (submitit), log {job.paths.stdout}")
    return 0
