"""The submitting side: one sbatch command, argument by argument, for a run or a sweep's array.

Every job runs the same batch script, ``train.sbatch`` next to this file (the
project's ``slurm/train.sbatch`` is a link to it), whose only command hands its
arguments to ``cinescene slurm-job``. What varies -- resources, job name, log
path, the training config and its overrides -- reaches sbatch as separate
arguments, so no user string is ever parsed by a shell.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cinescene.config.launch import LaunchConfig
from cinescene.errors import CineSceneError

BATCH_SCRIPT = Path(__file__).with_name("train.sbatch")
# The interpreter the batch script runs `cinescene slurm-job` with (see train.sbatch).
PYTHON_ENV = "CINESCENE_PYTHON"
SBATCH_TIMEOUT_S = 120


def tasks_per_node(launch: LaunchConfig) -> int:
    """One task per GPU; a CPU-only job (gpus_per_node=0) runs launch.nproc tasks per node."""
    return launch.slurm.gpus_per_node or launch.nproc


def resource_options(launch: LaunchConfig) -> list[str]:
    """sbatch options for launch.slurm (each key once, in a fixed order)."""
    s = launch.slurm
    opts = [
        f"--nodes={s.nodes}",
        f"--ntasks-per-node={tasks_per_node(launch)}",
        f"--cpus-per-task={s.cpus_per_task}",
    ]
    if s.gpus_per_node:
        opts.append(f"--gpus-per-node={s.gpus_per_node}")
    if s.mem:
        opts.append(f"--mem={s.mem}")
    opts += [f"--time={s.time}", f"--signal={s.signal}", "--requeue" if s.requeue else "--no-requeue"]
    for key in ("partition", "account", "qos"):
        if getattr(s, key):
            opts.append(f"--{key}={getattr(s, key)}")
    return opts + list(s.extra)


def log_pattern(directory: Path, name: str) -> str:
    """An sbatch --output path in ``directory``: a literal '%' of the path must not be a pattern."""
    return str(directory.resolve()).replace("%", "%%") + "/" + name


@dataclass(frozen=True)
class Submission:
    """An sbatch call: its arguments and the environment it adds."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell_line(self) -> str:
        """The same call as one line a user could paste into a shell."""
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env.items()), shlex.join(self.argv)])

    def describe(self) -> str:
        """What --dry-run prints: the call, then the batch script it submits."""
        return f"{self.shell_line()}\n\n# {BATCH_SCRIPT}\n{BATCH_SCRIPT.read_text()}"


def build(
    launch: LaunchConfig,
    *,
    job_name: str,
    output: str,
    job_args: Sequence[str],
    array: str | None = None,
    cwd: str | None = None,
) -> Submission:
    """sbatch [resources] [array] BATCH_SCRIPT JOB_ARGS..., run from ``cwd`` (default: here)."""
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name}",
        f"--chdir={cwd or os.getcwd()}",
        f"--output={output}",
        "--open-mode=append",
        *resource_options(launch),
    ]
    if array is not None:
        argv.append(f"--array={array}")
    return Submission(argv=[*argv, str(BATCH_SCRIPT), *job_args], env={PYTHON_ENV: sys.executable})


def submit(submission: Submission) -> str:
    """Run sbatch; returns the job id. sbatch's own complaint becomes a one-line error."""
    env = dict(os.environ, **submission.env)
    try:
        proc = subprocess.run(
            submission.argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=SBATCH_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise CineSceneError("`sbatch` is not on PATH: submitting needs a SLURM client") from None
    except subprocess.TimeoutExpired:
        raise CineSceneError(
            f"sbatch did not answer in {SBATCH_TIMEOUT_S} s; nothing may have been submitted (check squeue)"
        ) from None
    if proc.returncode != 0:
        message = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        raise CineSceneError(f"sbatch refused the job: {message}")
    job_id = proc.stdout.strip().split(";")[0]  # "id;cluster" on multi-cluster setups
    if not job_id.isdigit():
        raise CineSceneError(f"sbatch printed {proc.stdout.strip()!r}, expected a job id")
    return job_id
