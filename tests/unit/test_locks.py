"""Locks that hold on the file system in use: flock where it is shared between nodes, a lock file with a
heartbeat where it is node-local (Lustre localflock, NFS local_lock) or refused (Lustre noflock: ENOSYS).
Each case is forced here; the mount table is read as the kernel writes it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cinescene import locks
from cinescene.errors import CineSceneError
from cinescene.locks import DirLock, LockBusy, lock_kind, mount_of

HOLD = """
import sys, time
from cinescene import locks
kind = sys.argv[2]
if kind == "file":
    locks.lock_kind = lambda directory: ("file", "forced by the test")
elif kind == "noflock":
    import errno, fcntl
    def refuse(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")
    fcntl.flock = refuse
locks.HEARTBEAT_S = 0.05
locks.DirLock(sys.argv[1], "run.lock", lambda holder: f"busy: {holder}").acquire()
print("held", flush=True)
time.sleep(120)
"""


def mountinfo(tmp_path, monkeypatch, *mounts: tuple[str, str, str]) -> None:
    """A mount table of (mount point, file system type, super options) under a root ext4 mount."""
    lines = ["1 0 8:1 / / rw,relatime - ext4 /dev/sda1 rw"]
    for index, (point, fstype, options) in enumerate(mounts, start=2):
        lines.append(f"{index} 1 0:{index} / {point} rw,relatime - {fstype} server:/x {options}")
    path = tmp_path / "mountinfo"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(locks, "MOUNTINFO", path)


@pytest.mark.parametrize(
    "fstype, options, kind",
    [
        ("lustre", "rw,flock,lazystatfs", "flock"),
        ("lustre", "rw,localflock", "file"),
        ("lustre", "rw,lazystatfs", "file"),  # neither: Lustre's noflock default
        ("nfs4", "rw,vers=4.2,local_lock=none,addr=10.0.0.1", "flock"),
        ("nfs", "rw,vers=3,local_lock=flock", "file"),
        ("nfs", "rw,vers=3,nolock", "file"),
        ("beegfs", "rw,cfgFile=/etc/beegfs/beegfs-client.conf", "file"),
        ("fuse.sshfs", "rw,user_id=0", "file"),
        ("gpfs", "rw", "flock"),
    ],
)
def test_the_lock_kind_follows_the_mount(tmp_path, monkeypatch, fstype, options, kind):
    mountinfo(tmp_path, monkeypatch, ("/scratch", fstype, options), ("/scratch/local", "ext4", "rw"))
    assert lock_kind(tmp_path / "scratch" / "nope")[0] == "flock"  # not under /scratch: the root's ext4
    found, why = lock_kind(Path("/scratch/runs/a/checkpoints"))
    assert found == kind and why
    assert lock_kind(Path("/scratch/local/run"))[0] == "flock"  # the deeper mount
    assert mount_of(Path("/scratch/x"))[0] == fstype


@pytest.fixture
def holders():
    procs = []

    def start(directory, kind):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(directory), kind], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def lock(directory) -> DirLock:
    return DirLock(directory, "run.lock", lambda holder: f"busy: {holder}")


@pytest.mark.parametrize("kind", ["file", "noflock"])
def test_a_lock_file_refuses_a_second_taker_and_a_dead_holder_leaves_nothing_stale(
    tmp_path, monkeypatch, holders, kind
):
    """Forced: a node-local flock (the lock file is used), a refused flock (ENOSYS: the lock file again)."""
    if kind == "file":
        monkeypatch.setattr(locks, "lock_kind", lambda directory: ("file", "forced by the test"))
    else:

        def refuse(fd, operation):
            raise OSError(errno.ENOSYS, "Function not implemented")

        monkeypatch.setattr(fcntl, "flock", refuse)
    first = holders(tmp_path, kind)
    record = json.loads((tmp_path / "run.lock").read_text())
    assert record["kind"] == "file" and record["pid"] == first.pid and record["host"] == socket.gethostname()
    with pytest.raises(LockBusy, match=f"busy: pid {first.pid} on {socket.gethostname()} since"):
        lock(tmp_path).acquire()
    beat = record["beat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / "run.lock").read_text())["beat"] > beat  # its heartbeat moves
    first.send_signal(signal.SIGKILL)
    first.wait()
    started = time.monotonic()
    mine = lock(tmp_path).acquire()  # its holder is gone from this host: taken over at once
    assert time.monotonic() - started < 2 and mine.kind == "file"
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    mine.release()
    assert not (tmp_path / "run.lock").exists()


def other_node_lock(path, beat_at: float, beat: int = 7) -> dict:
    record = {
        "host": "another-node",
        "pid": 4242,
        "since": "2026-01-01 00:00:00",
        "slurm_job_id": None,
        "kind": "file",
        "token": "feedface",
        "beat": beat,
        "beat_at": beat_at,
    }
    path.write_text(json.dumps(record))
    return record


def test_a_lock_file_from_another_node_is_taken_over_only_once_its_heartbeat_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "lock_kind", lambda directory: ("file", "forced by the test"))
    monkeypatch.setattr(locks, "POLL_S", 0.05)
    monkeypatch.setattr(locks, "CONFIRM_S", 0.5)
    path = tmp_path / "run.lock"
    other_node_lock(path, time.time())  # a recent heartbeat: alive (or only just gone)
    with pytest.raises(LockBusy, match="busy: pid 4242 on another-node"):
        lock(tmp_path).acquire()
    other_node_lock(path, time.time() - 10 * locks.STALE_S)  # old by its clock, but still moving:
    stop = threading.Event()

    def beating():
        beat = 8
        while not stop.wait(0.1):
            other_node_lock(path, time.time() - 10 * locks.STALE_S, beat)
            beat += 1

    thread = threading.Thread(target=beating)
    thread.start()
    try:
        with pytest.raises(LockBusy):  # a clock that differs between nodes never takes a live lock
            lock(tmp_path).acquire()
    finally:
        stop.set()
        thread.join()
    other_node_lock(path, time.time() - 10 * locks.STALE_S)  # old and standing still: its holder is gone
    mine = lock(tmp_path).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    mine.release()


def test_flock_refused_where_it_is_tried_falls_back_to_the_lock_file(tmp_path, monkeypatch):
    """Lustre without flock answers ENOSYS: once a raw traceback in the run and sweep locks."""

    def refuse(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", refuse)
    held = lock(tmp_path).acquire()
    assert held.kind == "file" and (tmp_path / "run.lock").exists()
    with pytest.raises(LockBusy):
        lock(tmp_path).acquire()
    held.release()


def test_a_lock_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "file").write_text("x")
    with pytest.raises(Exception) as info:
        lock(tmp_path / "ro" / "file" / "below").acquire()
    assert "cannot create" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["flock", "file"])
def test_a_lock_path_that_is_a_symlink_or_a_directory_is_refused_never_followed(tmp_path, monkeypatch, kind):
    """A run.lock planted as a symlink would have had its target truncated and overwritten."""
    monkeypatch.setattr(locks, "lock_kind", lambda directory: (kind, "forced by the test"))
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.lock").symlink_to(victim)
    with pytest.raises(CineSceneError, match="is not a lock file .*never followed"):
        lock(tmp_path / "run").acquire()
    assert victim.read_text() == "precious\n"
    (tmp_path / "run" / "run.lock").unlink()
    (tmp_path / "run" / "run.lock").mkdir()
    with pytest.raises(CineSceneError, match="is not a lock file"):
        lock(tmp_path / "run").acquire()


def test_a_requeue_waits_for_its_previous_attempt_on_another_node(tmp_path, monkeypatch):
    """The same SLURM job, restarted on another node while its previous attempt still holds the lock file:
    it waits for the release instead of failing (the flock case is in test_run_lock.py)."""
    from cinescene.train.run_lock import RunDirLock

    monkeypatch.setattr(locks, "lock_kind", lambda directory: ("file", "forced by the test"))
    monkeypatch.setattr(locks, "POLL_S", 0.05)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    path = tmp_path / "run.lock"
    record = other_node_lock(path, time.time())
    path.write_text(json.dumps(dict(record, slurm_job_id="4242")))
    threading.Timer(0.5, path.unlink).start()  # the previous attempt releases a little later
    started = time.monotonic()
    mine = RunDirLock(tmp_path).acquire()
    assert 0.4 < time.monotonic() - started < 30
    assert json.loads(path.read_text())["pid"] == os.getpid()
    mine.release()
