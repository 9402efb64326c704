"""One run per run directory: an exclusive lock on ``<run.dir>/run.lock`` for the life of the run.

Two runs writing one directory corrupt each other's checkpoints, metrics and
W&B run. The lock is ``fcntl.flock`` on a file inside the directory: the
kernel frees it when its last holder dies, however it dies (SIGKILL, a node
reboot for local disks, the end of a SLURM job), so there is nothing stale to
clean up. The file holds who has it (host, pid, start time, SLURM job) for the
error a second run prints.

Who holds it: the standalone launcher (``cinescene train`` spawning local
ranks), whose ranks inherit the lock's descriptor, so the directory stays
locked until the launcher *and* every rank are gone; under torchrun,
deepspeed or srun, rank 0. A requeued SLURM job (same job id) whose previous
attempt is still being torn down waits for it (:data:`SAME_JOB_WAIT_S`)
instead of failing, so a requeue never loses its run to its own ghost.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("train")

LOCK_FILE = "run.lock"
# A requeued job waits this long for the previous attempt of the same job to release the lock.
SAME_JOB_WAIT_S = 300.0
POLL_S = 1.0

_held: dict[Path, RunDirLock] = {}  # this process's locks: kept referenced, so never closed by accident


class RunDirBusy(CineSceneError):
    """The run directory is locked by another run."""


def _holder_info() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    text = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
    return text + (f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else "")


class RunDirLock:
    """The lock of one run directory; :meth:`acquire` it, keep it while the run lives."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _try(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise

    def acquire(self) -> RunDirLock:
        """Take the lock or raise RunDirBusy naming its holder (after waiting for a previous attempt of
        this same SLURM job)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CineSceneError(
                f"cannot create the run directory's lock {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            if not self._try(fd):
                holder = self._holder()
                job = os.environ.get("SLURM_JOB_ID")
                if job and holder.get("slurm_job_id") == job:
                    _log.info(
                        "%s is held by the previous attempt of SLURM job %s (%s); waiting up to %.0f s for "
                        "it to end",
                        self.run_dir,
                        job,
                        _describe(holder),
                        SAME_JOB_WAIT_S,
                    )
                    deadline = time.monotonic() + SAME_JOB_WAIT_S
                    while not self._try(fd):
                        if time.monotonic() > deadline:
                            break
                        time.sleep(POLL_S)
                    else:
                        holder = None
                if holder is not None:
                    raise RunDirBusy(
                        f"run directory {self.run_dir} is in use by another run: {_describe(holder)}; "
                        f"it is free again when that run ends (the lock {self.path} is released by "
                        "the system), or give this run another run.dir"
                    )
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(_holder_info()) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        _held[self.path.resolve()] = self
        return self

    def release(self) -> None:
        if self.fd is not None:
            _held.pop(self.path.resolve(), None)
            os.close(self.fd)  # closing the last descriptor releases the flock
            self.fd = None


def hold_run_dir(run_dir: str | os.PathLike) -> RunDirLock:
    """This process's lock of ``run_dir``: taken now, or the one it already holds."""
    held = _held.get((Path(run_dir) / LOCK_FILE).resolve())
    return held if held is not None else RunDirLock(run_dir).acquire()
