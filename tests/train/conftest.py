"""Shared pieces of the trainer tests: the repository root and runs started as `kill -9`-able sessions."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from pathlib import Path

import pytest

from cinescene.distributed.env import RANK_VARIABLES

REPO = Path(__file__).resolve().parents[2]

# Every session `start` began: killed after each test and at exit, so an interrupted or failed test (its
# launcher killed on purpose, its ranks still running) leaves no process behind.
_STARTED: list[int] = []


def _kill_started() -> None:
    while _STARTED:
        try:
            os.killpg(_STARTED.pop(), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


atexit.register(_kill_started)


@pytest.fixture(autouse=True)
def _no_run_left_behind():
    yield
    _kill_started()


def run_env(**extra) -> dict:
    """A run's environment: W&B offline, CPU only, not a rank of whatever started pytest."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", **extra)
    for key in RANK_VARIABLES:
        env.pop(key, None)
    return env


def start(argv, log: Path, **env) -> subprocess.Popen:
    """Start ``argv`` in the repository, in its own session
    (so a kill reaches all of its ranks), output to ``log``."""
    handle = open(log, "ab")
    proc = subprocess.Popen(
        argv, cwd=REPO, env=run_env(**env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    _STARTED.append(proc.pid)
    return proc


def finish(proc: subprocess.Popen, timeout=600) -> int:
    """The exit status; on timeout the whole session is killed and the timeout re-raised."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
