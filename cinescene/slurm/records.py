"""What a run directory keeps about its SLURM jobs, under ``<run.dir>/slurm/``.

::

    slurm/jobs                  one submitted job id per line ("12", "13_4"), oldest first
    slurm/trial.json            a sweep trial's signature, overrides and max_steps
    slurm/<job>.out             the job's log, appended across its starts
    slurm/<job>.start-<N>.json  the environment of start N (restart count N)

All of it is data (JSON or plain text), written atomically or appended line by line, and fsynced
(:mod:`cinescene.durable`) before the command that wrote it goes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cinescene.durable import append_line, write_json_atomic

JOB_DIR = "slurm"
JOBS_FILE = "jobs"
TRIAL_FILE = "trial.json"


def job_log_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / JOB_DIR


def job_log_path(run_dir: str | os.PathLike, label: str) -> Path:
    """``<run.dir>/slurm/<job>.out`` for a job labelled as SLURM's %j / %A_%a would."""
    return job_log_dir(run_dir) / f"{label}.out"


def write_record(path: Path, data: Any) -> None:
    """A JSON record under ``<run.dir>/slurm/``, atomically and durably (its directory made first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_job(run_dir: str | os.PathLike, job_id: str) -> None:
    path = job_log_dir(run_dir) / JOBS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    append_line(path, job_id)


def recorded_jobs(run_dir: str | os.PathLike) -> list[str]:
    path = job_log_dir(run_dir) / JOBS_FILE
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def last_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The last complete row of ``<run.dir>/metrics.jsonl`` ({} when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if isinstance(row, dict):
            return row
    return {}
