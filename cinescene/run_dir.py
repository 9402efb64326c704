"""A run directory and every name inside it; ``metrics.jsonl``'s one writer and one reader.

``run.dir`` holds::

    config.yaml             the resolved config of the last start (secrets masked)
    metrics.jsonl           one JSON object per logged step (:class:`MetricsFile`)
    checkpoints/            step directories and `latest`, unless checkpoint.dir puts them elsewhere
    logs/rank<R>.log        each rank's log (library output included)
    wandb/                  W&B's files (offline runs)
    run.lock                who runs here now (:mod:`cinescene.locks`)
    slurm/                  SLURM jobs of this run: jobs, <job>.out, <job>.start-<N>.json, trial.json;
                            a sweep's run_root: array-<time>.json tables and .lock (one submission at a time)

Nothing else spells these names: code that reads or writes inside a run
directory asks :class:`RunDir`. A sweep's ``run_root`` keeps its own job
array files the same way (:meth:`RunDir.slurm`). This module imports nothing
of the project but its errors and durable writes, so every package may use it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cinescene.durable import write_atomic
from cinescene.errors import CineSceneError

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LOGS = "logs"
WANDB = "wandb"
LOCK = "run.lock"
SLURM = "slurm"
SLURM_JOBS = "jobs"
TRIAL = "trial.json"
SUBMIT_LOCK = ".lock"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created by asking)."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> MetricsFile:
        return MetricsFile(self.root / METRICS)

    @property
    def checkpoints(self) -> Path:
        """The default checkpoint directory (``checkpoint.dir`` may name another one)."""
        return self.root / CHECKPOINTS

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    def rank_log(self, rank: int, prefix: str = "rank") -> Path:
        return self.logs / f"{prefix}{rank}.log"

    @property
    def wandb(self) -> Path:
        return self.root / WANDB

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def slurm(self) -> Path:
        return self.root / SLURM

    @property
    def slurm_jobs(self) -> Path:
        """Submitted job ids, one per line, oldest first."""
        return self.slurm / SLURM_JOBS

    @property
    def trial(self) -> Path:
        """A sweep trial's record: its signature, overrides and max_steps."""
        return self.slurm / TRIAL

    @property
    def submit_lock(self) -> str:
        """The name of the lock in :attr:`slurm` that serialises a sweep's submissions."""
        return SUBMIT_LOCK

    def job_log(self, label: str) -> Path:
        """The log of a job labelled as SLURM's %j / %A_%a would name it."""
        return self.slurm / f"{label}.out"

    def start_record(self, label: str, restart: int) -> Path:
        """What start ``restart`` of job ``label`` ran with (config, git state, versions, nodes)."""
        return self.slurm / f"{label}.start-{restart}.json"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsFile:
    """``metrics.jsonl``: one JSON object per logged step, ``step`` first; appended line by line.

    A crash can cut the last line short (and a copy or a full disk can damage
    any line): readers skip every line that is not a whole JSON object with an
    integer ``step``, so a damaged file reads as the rows that survived.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # ---------------------------------------------------------------- writing
    def open_append(self) -> IO[str]:
        """A line-buffered handle for :meth:`write_row` (rows reach the file as they are written)."""
        return open(self.path, "a", buffering=1)

    @staticmethod
    def write_row(handle: IO[str], step: int, values: Mapping[str, Any]) -> None:
        row = {"step": step, **{k: _json_value(v) for k, v in values.items()}}
        handle.write(json.dumps(row) + "\n")

    def keep_through(self, last_step: int) -> int:
        """Keep the rows with ``step <= last_step`` (and drop damaged lines), atomically; how many went."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line, row in self._lines():
            if row is not None and row["step"] <= last_step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            write_atomic(self.path, "".join(line + "\n" for line in kept))
        return dropped

    # ---------------------------------------------------------------- reading
    def _lines(self) -> list[tuple[str, dict[str, Any] | None]]:
        try:
            text = self.path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CineSceneError(f"{self.path}: cannot read the metrics ({exc.strerror or exc})") from None
        out = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                row = None  # a line cut short by a crash
            if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
                row = None
            out.append((line, row))
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row, in file order ([] without a file)."""
        return [row for _line, row in self._lines() if row is not None]

    def last(self) -> dict[str, Any]:
        """The last complete row ({} when there is none)."""
        rows = self.rows()
        return rows[-1] if rows else {}
