"""What a run directory keeps about its SLURM jobs, under ``<run.dir>/slurm/`` (names: :class:`RunDir`).

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
import re
from pathlib import Path
from typing import Any

from cinescene.durable import append_line, write_json_atomic
from cinescene.run_dir import RunDir

# A job id as SLURM prints it: "12", or "13_4" for an array task.
JOB_ID = re.compile(r"^\d+(_\d+)?$")


def write_record(path: Path, data: Any, mode: int | None = None) -> None:
    """A JSON record under ``<run.dir>/slurm/``, atomically and durably (its directory made first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data, mode=mode)


def _text(path: Path) -> str | None:
    """A record file's text, undecodable bytes replaced; None when it is missing or not a readable file
    (a directory, a name too long, a symlink loop: a damaged record reads as an absent one)."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not a JSON object."""
    text = _text(path)
    try:
        data = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    """``value`` when it is a ``kind`` (never a bool for a number), else None: fields of records read back."""
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        return None
    return value if isinstance(value, kind) else None


def string_list(value: Any) -> list[str]:
    """A record's list of strings (overrides); anything else reads as empty."""
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else []


def record_job(run_dir: str | os.PathLike, job_id: str) -> None:
    path = RunDir(run_dir).slurm_jobs
    path.parent.mkdir(parents=True, exist_ok=True)
    append_line(path, job_id)


def recorded_jobs(run_dir: str | os.PathLike) -> list[str]:
    """The job ids in ``slurm/jobs``, oldest first; a line that is not a job id ("12", "13_4") is skipped."""
    text = _text(RunDir(run_dir).slurm_jobs) or ""
    return [line.strip() for line in text.splitlines() if JOB_ID.match(line.strip())]
