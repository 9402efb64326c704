"""One run per run directory and per checkpoint directory, for the life of the run.

Two runs writing one directory corrupt each other's checkpoints, metrics and
W&B run; two runs sharing a checkpoint directory (``checkpoint.dir``) delete
each other's saves in progress, resume from each other's checkpoints and
prune each other's steps. So a run holds ``<run.dir>/run.lock`` and
``<checkpoint dir>/run.lock`` (one lock when they are the same directory),
each a :class:`cinescene.locks.DirLock`: ``flock`` where the file system
shares it between nodes, an exclusive-create lock file with a heartbeat where
it does not (Lustre ``localflock``/``noflock``, ...). Either names its holder
(host, pid, start time, SLURM job) for the error a second run prints.

Who holds them: the standalone launcher (``cinescene train`` spawning local
ranks), whose ranks inherit a flock's descriptor, so the directories stay
locked until the launcher *and* every rank are gone; under torchrun,
deepspeed or srun, rank 0. A requeued SLURM job (same job id) whose previous
attempt is still being torn down waits for it (:data:`SAME_JOB_WAIT_S`)
instead of failing, so a requeue never loses its run to its own ghost.
"""

from __future__ import annotations

import os
from pathlib import Path

from cinescene.ckpt.locate import checkpoints_dir
from cinescene.config.schema import CineSceneConfig
from cinescene.locks import DirLock, LockBusy
from cinescene.run_dir import LOCK, RunDir

# A requeued job waits this long for the previous attempt of the same job to release the lock.
SAME_JOB_WAIT_S = 300.0

_held: dict[Path, DirLock] = {}  # this process's locks: kept referenced, so never closed by accident


class RunDirBusy(LockBusy):
    """The run directory or the checkpoint directory is locked by another run."""


def _same_job(holder: dict) -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    return bool(job) and holder.get("slurm_job_id") == job


class _RunLock(DirLock):
    """A directory one run owns; a second run gets :class:`RunDirBusy`, a requeue of the same job waits."""

    def __init__(self, directory: str | os.PathLike):
        super().__init__(directory, LOCK, self.message)

    def message(self, holder: str) -> str:
        raise NotImplementedError

    def acquire(self, wait_s: float = SAME_JOB_WAIT_S, wait_for=_same_job) -> DirLock:
        try:
            return super().acquire(wait_s, wait_for)
        except LockBusy as exc:
            raise RunDirBusy(str(exc)) from None


class RunDirLock(_RunLock):
    def message(self, holder: str) -> str:
        return (
            f"run directory {self.directory} is in use by another run: {holder}; it is free again when that "
            "run ends, or give this run another run.dir"
        )


class CheckpointDirLock(_RunLock):
    def message(self, holder: str) -> str:
        return (
            f"checkpoint directory {self.directory} is in use by another run: {holder}; one checkpoint "
            "directory belongs to one run: give this run another checkpoint.dir"
        )


def _hold(lock: _RunLock) -> DirLock:
    key = lock.path.resolve()
    held = _held.get(key)
    if held is not None and held.fd is not None:
        return held
    _held[key] = lock.acquire()
    return lock


def hold_run(cfg: CineSceneConfig) -> list[DirLock]:
    """This process's locks of the run's directory and checkpoint directory: taken now, or already held."""
    run_dir = RunDir(cfg.run.dir).root
    locks = [_hold(RunDirLock(run_dir))]
    checkpoints = checkpoints_dir(cfg)
    if checkpoints.resolve() != run_dir.resolve():
        locks.append(_hold(CheckpointDirLock(checkpoints)))
    return locks
