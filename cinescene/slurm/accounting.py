"""Job states: the controller's (squeue) while it holds a job, accounting's (sacct) after.

``squeue -t all`` is authoritative for the jobs slurmctld still holds
(``MinJobAge`` after they end), including through a requeue, where sacct may
briefly show the previous run's record as final. Older jobs come from sacct.
A job neither knows shows as UNKNOWN, except an array task that was cancelled
before it started: it leaves no record of its own, while its array's other
tasks do, and shows as CANCELLED.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .records import recorded_jobs

_log = get_logger("slurm")

QUERY_TIMEOUT_S = 60
UNKNOWN = "UNKNOWN"
# States of a job that is not over: it runs, waits to, or is between two starts.
LIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
    }
)
# sacct's aggregated row for array tasks that never started: "12_[3-5,7%2]".
_ARRAY_ROW = re.compile(r"^(\d+)_\[([0-9,\-]+)(%\d+)?\]$")


def _query(cmd: list[str]) -> list[str]:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log.warning("`%s` failed: %s", " ".join(cmd), exc)
        return []
    if proc.returncode != 0:
        _log.warning("`%s` failed: %s", " ".join(cmd), proc.stderr.strip())
        return []
    return [line for line in proc.stdout.splitlines() if line.strip()]


def parse_rows(lines: Iterable[str]) -> dict[str, str]:
    """``JOBID|STATE`` lines (squeue or sacct) -> {job id: state}; array ranges expanded."""
    states: dict[str, str] = {}
    for line in lines:
        job, _, state = line.strip().partition("|")
        state = state.split()[0] if state.strip() else UNKNOWN  # "CANCELLED by 0" -> "CANCELLED"
        match = _ARRAY_ROW.match(job)
        if match:
            base, ranges = match.group(1), match.group(2)
            for part in ranges.split(","):
                lo, _, hi = part.partition("-")
                for index in range(int(lo), int(hi or lo) + 1):
                    states.setdefault(f"{base}_{index}", state)
        else:
            states[job] = state
    return states


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """{job id: state} for job ids such as "12" or "12_3"."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    live = parse_rows(_query(["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T"]))
    states = {job: live[job] for job in wanted if job in live}
    rest = [job for job in wanted if job not in states]
    if rest:
        done = parse_rows(_query(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(rest)]))
        known_arrays = {job.partition("_")[0] for job in [*live, *done] if "_" in job}
        for job in rest:
            array, sep, _ = job.partition("_")
            # An array task cancelled before it started leaves no record of its own, in squeue or sacct.
            states[job] = done.get(job) or ("CANCELLED" if sep and array in known_arrays else UNKNOWN)
    return states


def check_no_live_job(run_dir: str | os.PathLike) -> None:
    """One job per run directory: refuse (one line) while the last job recorded there is still live."""
    last = (recorded_jobs(run_dir) or [None])[-1]
    state = job_states([last]).get(last) if last else None
    if state in LIVE_STATES:
        raise CineSceneError(
            f"{run_dir} already has job {last} ({state}); one job per run directory "
            f"(scancel {last} first, or choose another run.dir)"
        )
