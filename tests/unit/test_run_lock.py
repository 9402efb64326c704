"""One run per run directory: the lock names its holder, the kernel frees it on death (even SIGKILL), a
requeued SLURM job waits for its own previous attempt, and `cinescene train` refuses a locked directory
with one line, before any rank starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cinescene import locks
from cinescene.train import run_lock
from cinescene.train.run_lock import RunDirBusy, RunDirLock

HOLD = (
    "import sys, time; from cinescene.train.run_lock import RunDirLock; RunDirLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); time.sleep(120)"
)


def hold_in_another_process(run_dir, **env):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **env),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path):
    procs = []

    def start(**env):
        procs.append(hold_in_another_process(tmp_path / "run", **env))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_second_holder_is_refused_naming_the_first_and_sigkill_frees_it(tmp_path, holder):
    first = holder()
    with pytest.raises(RunDirBusy) as info:
        RunDirLock(tmp_path / "run").acquire()
    assert f"run directory {tmp_path / 'run'} is in use by another run: pid {first.pid} on " in str(
        info.value
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    lock = RunDirLock(tmp_path / "run").acquire()  # freed by the kernel: no stale lock to clean up
    assert f'"pid": {os.getpid()}' in (tmp_path / "run" / "run.lock").read_text()
    lock.release()


def test_a_requeued_job_waits_for_its_previous_attempt(tmp_path, holder, monkeypatch):
    previous = holder(SLURM_JOB_ID="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(locks, "POLL_S", 0.05)
    threading.Timer(0.5, previous.kill).start()  # the previous attempt is torn down a little later
    lock = RunDirLock(tmp_path / "run").acquire()
    assert previous.poll() is not None
    lock.release()


def test_another_job_does_not_wait(tmp_path, holder, monkeypatch):
    holder(SLURM_JOB_ID="1")
    monkeypatch.setenv("SLURM_JOB_ID", "2")
    start = time.monotonic()
    with pytest.raises(RunDirBusy, match=r"\(SLURM job 1\)"):
        RunDirLock(tmp_path / "run").acquire()
    assert time.monotonic() - start < run_lock.SAME_JOB_WAIT_S


def _train(repo_root, run_dir, *overrides, **env):
    environ = dict(os.environ, WANDB_MODE="offline", **env)
    environ.pop("RANK", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cinescene",
            "train",
            "configs/experiments/smoke.yaml",
            f"run.dir={run_dir}",
            *overrides,
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


@pytest.mark.parametrize("as_rank_zero", [False, True], ids=["standalone launcher", "rank 0 of torchrun"])
def test_cinescene_train_on_a_locked_directory_is_one_line(tmp_path, holder, repo_root, as_rank_zero):
    first = holder()
    env = (
        dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")
        if as_rank_zero
        else {}
    )
    out = _train(repo_root, tmp_path / "run", **env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith("cinescene train: error: run directory") and f"pid {first.pid} on" in lines[0]
    assert not (tmp_path / "run" / "logs").exists()  # refused before it wrote anything


HOLD_RUN = (
    "import sys, time; from cinescene.config import load_config; "
    "from cinescene.train.run_lock import hold_run; "
    "hold_run(load_config('configs/experiments/smoke.yaml', ['run.dir=' + sys.argv[1]])[0]); "
    "print('held', flush=True); time.sleep(120)"
)


def test_two_runs_sharing_a_checkpoint_directory_the_second_is_refused(tmp_path, repo_root):
    """Run B with checkpoint.dir = run A's checkpoints would delete A's saves in progress, resume from A's
    steps and prune them: the checkpoint directory is locked as well as run.dir."""
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD_RUN, str(tmp_path / "a")],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout.readline().strip() == "held"
        out = _train(repo_root, tmp_path / "b", f"checkpoint.dir={tmp_path / 'a' / 'checkpoints'}")
    finally:
        first.kill()
        first.wait()
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith(
        f"cinescene train: error: checkpoint directory {tmp_path / 'a' / 'checkpoints'} is in use by another "
        f"run: pid {first.pid} on "
    )
    assert not (tmp_path / "b" / "logs").exists()  # refused before anything was written


def test_a_build_lock_left_by_a_killed_process_is_removed_and_a_held_one_kept(tmp_path):
    """torch's JIT-extension lock file (DeepSpeed's ops): a rank killed while holding it would make every
    later start wait forever; only a lock no process holds open, and old enough, is removed."""
    from cinescene.train.build_locks import LOCAL_STALE_S, clear_stale_build_locks

    dead, held, young = (
        tmp_path / "py311_cpu" / name / "lock" for name in ("dead_op", "held_op", "young_op")
    )
    for lock in (dead, held, young):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = time.time() - 10 * LOCAL_STALE_S
    os.utime(dead, (old, old))
    os.utime(held, (old, old))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; f = open(sys.argv[1]); print('open', flush=True); time.sleep(120)",
            str(held),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        assert clear_stale_build_locks(tmp_path, now=time.time()) == [dead]
        assert not dead.exists() and held.exists() and young.exists()
    finally:
        holder.kill()
        holder.wait()


NOFLOCK_TRAIN = """
import errno, fcntl, os, signal, sys
from cinescene.distributed import startup_signals
from cinescene.launch.cli import main

def refuse(fd, operation):  # Lustre without flock: the call itself fails
    raise OSError(errno.ENOSYS, "Function not implemented")
fcntl.flock = refuse
install = startup_signals.install
def install_then_signal(*args, **kwargs):  # a preemption before the ranks start: locked, then nothing run
    install(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGUSR1)
startup_signals.install = install_then_signal
sys.exit(main(["train", "configs/experiments/smoke.yaml", *sys.argv[1:]]))
"""


def test_train_where_flock_is_refused_locks_with_a_lock_file(tmp_path, repo_root):
    """flock failing with ENOSYS (Lustre mounted without flock) was a raw traceback: the run now takes a
    lock file instead, and a clean exit removes it."""
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("RANK", None)
    out = subprocess.run(
        [sys.executable, "-c", NOFLOCK_TRAIN, f"run.dir={tmp_path / 'run'}"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 124 and len(lines) == 1 and "preemption requested (SIGUSR1)" in lines[0], (
        out.stderr
    )
    assert not (tmp_path / "run" / "run.lock").exists()  # a lock file, released
