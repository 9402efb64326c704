"""What a run directory keeps about its SLURM jobs, under ``<run.dir>/slurm/`` (names: :class:`RunDir`).

::

    slurm/jobs                  one submitted job id per line ("12", "13_4"), oldest first
    slurm/trial.json            a sweep trial's signature, overrides and max_steps
    slurm/<job>.out             the job's log, appended across its starts
    slurm/<job>.start-<N>.json  the environment of start N (restart count N)

All of it is data (JSON or plain text), written atomically or appended line by line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cinescene.run_dir import RunDir


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_job(run_dir: str | os.PathLike, job_id: str) -> None:
    path = RunDir(run_dir).slurm_jobs
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{job_id}\n")


def recorded_jobs(run_dir: str | os.PathLike) -> list[str]:
    path = RunDir(run_dir).slurm_jobs
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
