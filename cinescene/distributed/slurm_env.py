"""What a process knows from SLURM about its job: its id, its restarts, whether it is the batch step,
and its nodes; the one wrapper of ``scontrol``.

Everything here reads the environment SLURM gives a job (``SLURM_JOB_ID``,
``SLURM_RESTART_COUNT``, ``SLURM_JOB_NODELIST`` ...) or asks ``scontrol``; none
of it imports torch, so the batch side of a job starts in well under a second.
Rank detection (:mod:`.env`), the batch side of a job (:mod:`cinescene.slurm.job`)
and training's restart metric read SLURM through this module only.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

from cinescene.errors import CineSceneError

SCONTROL_TIMEOUT_S = 60


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def in_batch_job(environ: Mapping[str, str] | None = None) -> bool:
    """True in the batch script of a SLURM job (not inside one of its ``srun`` steps)."""
    env = _environ(environ)
    return "SLURM_JOB_ID" in env and "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How many times SLURM has restarted this job (requeues of any kind); 0 outside SLURM."""
    value = _environ(environ).get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def job_label(environ: Mapping[str, str] | None = None) -> str:
    """The job as SLURM's ``%j`` (or ``%A_%a`` for an array task) names it in file names."""
    env = _environ(environ)
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def scontrol(*args: str) -> str:
    """``scontrol ARGS`` -> stdout; a failure is a one-line error naming the command."""
    cmd = ["scontrol", *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise CineSceneError("`scontrol` is not on PATH: this needs a SLURM client") from None
    except subprocess.TimeoutExpired:
        raise CineSceneError(f"`{' '.join(cmd)}` did not answer in {SCONTROL_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise CineSceneError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def expand_nodes(nodelist: str) -> list[str]:
    """``gpu[003-004]`` -> ``['gpu003', 'gpu004']``."""
    return scontrol("show", "hostnames", nodelist).split()


def node_address(node: str) -> str:
    """The address SLURM reaches ``node`` at (its NodeAddr): what every rank can connect to."""
    for token in scontrol("show", "node", "-o", node).split():
        key, _, value = token.partition("=")
        if key == "NodeAddr" and value:
            return value
    return node
