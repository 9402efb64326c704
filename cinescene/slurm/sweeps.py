"""A sweep on SLURM: its unfinished trials as one job array, and one status row per trial.

Submitting writes, for each trial, ``<trial run.dir>/slurm/trial.json`` (its
signature, overrides, max_steps; secrets masked) and appends the array task's id to its
``slurm/jobs``; the array's table, ``<run_root>/slurm/array-<time>.json`` (mode 0600:
it holds the overrides verbatim, as the tasks must run them), maps
task index -> [config, overrides...] for ``cinescene slurm-job --array-table``.
A trial is skipped when its run directory already holds a checkpoint at
``train.max_steps`` (finished) or its last job is still queued or running;
every other trial is (re)submitted and resumes from its own checkpoints.
Submissions of one sweep are serialised by a lock on ``<run_root>/slurm/.lock``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cinescene.ckpt.locate import checkpoints_dir, latest_step
from cinescene.config.base import ConfigError
from cinescene.config.sweep import SweepSpec, Trial
from cinescene.errors import CineSceneError
from cinescene.locks import DirLock
from cinescene.run_dir import RunDir
from cinescene.secrets import scrub, secret_values

from . import sbatch
from .accounting import LIVE_STATES, UNKNOWN, job_states
from .records import read_json, record_job, recorded_jobs, string_list, typed, write_record

NOT_SUBMITTED = "-"


@dataclass
class TrialPlan:
    trial: Trial
    action: str  # "submit", "finished", "queued"
    detail: str = ""


def require_own_checkpoint_dirs(trials: Sequence[Trial]) -> None:
    """No two trials share a checkpoint directory (compared resolved: ``./``, ``..``, a trailing slash or a
    symlink do not make two spellings of one directory two directories); they would prune each other's."""
    seen: dict[Path, Trial] = {}
    for trial in trials:
        where = checkpoints_dir(trial.config).resolve()
        first = seen.setdefault(where, trial)
        if first is not trial:
            raise ConfigError(
                "checkpoint.dir",
                f"sweep trials {first.index} and {trial.index} would share the checkpoint directory {where}; "
                "one checkpoint directory belongs to one run: give each trial its own (the default, "
                "<run.dir>/checkpoints, is)",
            )


def plan(trials: Sequence[Trial]) -> list[TrialPlan]:
    """What a submission does with each trial: submit it, or skip it (finished / still queued)."""
    require_own_checkpoint_dirs(trials)
    last_jobs = {t.signature: (recorded_jobs(t.run_dir) or [None])[-1] for t in trials}
    states = job_states([j for j in last_jobs.values() if j])
    plans = []
    for t in trials:
        step = latest_step(checkpoints_dir(t.config))
        job = last_jobs[t.signature]
        if step is not None and step >= t.config.train.max_steps:
            plans.append(TrialPlan(t, "finished", f"step {step}/{t.config.train.max_steps}"))
        elif job and states.get(job) in LIVE_STATES:
            plans.append(TrialPlan(t, "queued", f"job {job} {states[job]}"))
        else:
            plans.append(TrialPlan(t, "submit", f"from step {step}" if step else "fresh"))
    return plans


def shared_launch(trials: Sequence[Trial]):
    """The resources every trial shares (one array = one sbatch call = one set of resources)."""
    first = trials[0].config.launch
    for t in trials[1:]:
        if t.config.launch.slurm != first.slurm or t.config.launch.nproc != first.nproc:
            raise CineSceneError(
                f"sweep trials {trials[0].index} and {t.index} ask for different launch.slurm / "
                "launch.nproc resources; one job array has one set: split the sweep"
            )
    return first


@contextmanager
def sweep_lock(run_root: Path) -> Iterator[None]:
    """One submission of a sweep at a time (a :class:`cinescene.locks.DirLock` in its ``slurm/``)."""
    root = RunDir(run_root)
    lock = DirLock(
        root.slurm,
        root.submit_lock,
        lambda holder: f"another `cinescene sweep` is submitting {run_root} right now ({holder})",
    ).acquire()
    try:
        yield
    finally:
        lock.release()


def array_submission(
    spec: SweepSpec, todo: Sequence[Trial], run_root: Path, table: Path, max_parallel: int | None
) -> sbatch.Submission:
    throttle = f"%{max_parallel}" if max_parallel else ""
    return sbatch.build(
        shared_launch(todo),
        job_name=spec.name,
        output=sbatch.log_pattern(RunDir(run_root).slurm, "%A_%a.out"),
        job_args=["--array-table", str(table.resolve())],
        array=f"0-{len(todo) - 1}{throttle}",
    )


def submit_array(
    spec: SweepSpec, base: str, todo: Sequence[Trial], run_root: Path, max_parallel: int | None
) -> str:
    """Write the table and each trial's record, submit the array; returns the array's job id."""
    table = (
        RunDir(run_root).slurm / f"array-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}.json"
    )
    submission = array_submission(spec, todo, run_root, table, max_parallel)
    # What the array's tasks run, verbatim (a secret given as an override must reach its job): private.
    write_record(
        table,
        {
            "sweep": spec.name,
            "trials": [{"signature": t.signature, "argv": [base, *t.overrides]} for t in todo],
        },
        mode=0o600,
    )
    write_trial_records(spec, todo)
    job_id = sbatch.submit(submission)
    for index, t in enumerate(todo):
        record_job(t.run_dir, f"{job_id}_{index}")
    return job_id


def write_trial_records(spec: SweepSpec, todo: Sequence[Trial]) -> None:
    """Each trial's ``slurm/trial.json``: what `cinescene sweep status` reads back from a run_root."""
    for t in todo:
        config = OmegaConf.to_container(OmegaConf.structured(t.config))
        record = {
            "sweep": spec.name,
            "signature": t.signature,
            "varied": t.varied,
            "overrides": t.overrides,
            "max_steps": t.config.train.max_steps,
        }
        write_record(RunDir(t.run_dir).trial, scrub(record, secret_values(config=config)))


def array_task(table: Path, task_id: int) -> list[str]:
    """[config, overrides...] of array task ``task_id`` from a table `cinescene sweep` wrote."""
    data = read_json(table)
    trials = data.get("trials") if data else None
    if not isinstance(trials, list):
        raise CineSceneError(f"{table} is not a sweep's array table (no `trials` list)")
    if not 0 <= task_id < len(trials):
        raise CineSceneError(f"{table} has {len(trials)} trials; there is no array task {task_id}")
    argv = trials[task_id].get("argv") if isinstance(trials[task_id], dict) else None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise CineSceneError(f"{table}: trial {task_id} has no [config, overrides...] argv")
    return argv


# ------------------------------------------------------------------ status
@dataclass
class TrialStatus:
    signature: str
    overrides: list[str]
    state: str
    job: str | None
    step: int | None
    max_steps: int | None
    restarts: int | None
    loss: float | None
    run_dir: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def trial_dirs(run_root: Path) -> list[Path]:
    """Run directories under ``run_root`` that a sweep submission marked as its trials."""
    if not run_root.is_dir():
        raise CineSceneError(f"{run_root} is not a directory (give a sweep file or a sweep's run_root)")
    found = sorted(p for p in run_root.iterdir() if RunDir(p).trial.is_file())
    if not found:
        shown = RunDir("<trial>").trial
        raise CineSceneError(
            f"{run_root} holds no sweep trials (no {shown}): give the "
            "sweep file, or the run_root of a sweep that was submitted"
        )
    return found


def status(entries: Sequence[dict[str, Any]]) -> list[TrialStatus]:
    """One row per trial; ``entries`` hold signature, varied overrides, max_steps and run_dir."""
    last_jobs = {e["run_dir"]: (recorded_jobs(e["run_dir"]) or [None])[-1] for e in entries}
    states = job_states([j for j in last_jobs.values() if j])
    rows = []
    for e in entries:
        job = last_jobs[e["run_dir"]]
        metrics = RunDir(e["run_dir"]).metrics.last()
        rows.append(
            TrialStatus(
                signature=e["signature"],
                overrides=string_list(e.get("varied")),
                state=states.get(job, UNKNOWN) if job else NOT_SUBMITTED,
                job=job,
                step=typed(metrics.get("step"), int),
                max_steps=typed(e.get("max_steps"), int),
                restarts=typed(metrics.get("restarts"), int),
                loss=typed(metrics.get("loss"), (int, float)),
                run_dir=str(e["run_dir"]),
            )
        )
    return rows


def entries_of_trials(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    return [
        {
            "signature": t.signature,
            "varied": t.varied,
            "max_steps": t.config.train.max_steps,
            "run_dir": t.run_dir,
        }
        for t in trials
    ]


def entries_of_dir(run_root: Path) -> list[dict[str, Any]]:
    entries = []
    for path in trial_dirs(run_root):
        record = read_json(RunDir(path).trial) or {}
        entries.append(
            {
                "signature": typed(record.get("signature"), str) or path.name,
                "varied": string_list(record.get("varied")),
                "max_steps": typed(record.get("max_steps"), int),
                "run_dir": str(path),
            }
        )
    return entries


def status_table(rows: Sequence[TrialStatus]) -> str:
    head = ("signature", "state", "step", "restarts", "loss", "overrides")
    lines = [head]
    for r in rows:
        step = f"{r.step if r.step is not None else '-'}/{r.max_steps if r.max_steps is not None else '?'}"
        loss = f"{r.loss:.4f}" if isinstance(r.loss, (int, float)) else "-"
        lines.append(
            (
                r.signature,
                r.state,
                step,
                "-" if r.restarts is None else str(r.restarts),
                loss,
                " ".join(r.overrides) or "(base config)",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] + "\n" for line in lines
    )
