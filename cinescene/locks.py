"""An exclusive lock on a directory that holds on the file system the directory is on.

Two kinds, chosen per directory (:func:`lock_kind`) from the mount it lies on
(``/proc/self/mountinfo``):

* ``flock``: ``fcntl.flock`` on the lock file. The kernel frees it when its
  last holder dies, however it dies, so nothing stale is ever left. Used where
  flock is seen by every node that can open the file: local file systems (only
  this node sees them), NFS without ``local_lock``, Lustre mounted with
  ``flock``, GPFS, CephFS, and any file system not named below.
* ``file``: the lock file itself, created with ``O_CREAT | O_EXCL`` (atomic on
  every shared file system), holding host, pid, a token and a heartbeat that a
  thread of the holder advances every :data:`HEARTBEAT_S`; removed on release.
  Used where flock is node-local (Lustre ``localflock``, NFS
  ``local_lock=flock|all`` or ``nolock``, BeeGFS's default, FUSE file systems)
  or refused (Lustre ``noflock``, the default without ``flock``; or flock
  failing with ENOSYS, EOPNOTSUPP or ENOLCK wherever it is tried).

A lock file whose holder died is stale, and the next taker removes it: at
once when the holder ran on this host and its process is gone; otherwise once
its heartbeat is older than :data:`STALE_S` by the holder's own clock *and* a
waiter has seen it stand still for :data:`CONFIRM_S` (so a clock that differs
between nodes cannot take a live lock). A live holder whose heartbeat thread
cannot run (the process stopped with SIGSTOP for longer than ``STALE_S``)
loses the lock: that is the price of a lock no kernel watches.

The lock file's content names the holder for the error a second taker prints.
Nothing of the project but its errors and logger is imported here.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("locks")

LockKind = Literal["flock", "file"]
MOUNTINFO = Path("/proc/self/mountinfo")
HEARTBEAT_S = 10.0
STALE_S = 60.0
CONFIRM_S = 2 * HEARTBEAT_S + 1.0
POLL_S = 1.0
RECORD_BYTES = 1024  # the lock file is rewritten in place at this fixed size (one write, never shorter)
# flock errors that mean "not supported here", not "held by someone".
FLOCK_UNSUPPORTED = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL)
_FILE_KIND = "file"


class LockBusy(CineSceneError):
    """The directory is locked by someone else (the message names the holder)."""


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_of(path: Path) -> tuple[str, set[str]]:
    """(file system type, mount and super options) of the mount ``path`` lies on; ("", set()) if unknown."""
    target = Path(path).resolve()  # symlinks of the part that exists resolved; the rest taken as written
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return "", set()
    best, found = -1, ("", set())
    for line in lines:
        fields = line.split()
        if "-" not in fields or len(fields) < 6:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 3:
            continue
        point = Path(_unescape(fields[4]))
        if target == point or point in target.parents:
            depth = len(point.parts)
            if depth >= best:  # deeper wins; at equal depth the later mount (over the earlier) wins
                best = depth
                options = set(fields[5].split(",")) | set(
                    fields[dash + 3].split(",") if len(fields) > dash + 3 else []
                )
                found = (fields[dash + 1], options)
    return found


def lock_kind(directory: Path) -> tuple[LockKind, str]:
    """Which lock holds across the nodes that see ``directory``, and why (see the module doc)."""
    fstype, options = mount_of(directory)
    local_lock = next((o.partition("=")[2] for o in options if o.startswith("local_lock=")), "")
    if fstype == "lustre":
        if "flock" in options:
            return "flock", "Lustre mounted with flock"
        why = "localflock: flock is node-local" if "localflock" in options else "no flock: flock is refused"
        return "file", f"Lustre mounted with {why}"
    if fstype.startswith("nfs") and (local_lock in ("flock", "all") or "nolock" in options):
        return "file", f"NFS mounted with {'nolock' if 'nolock' in options else 'local_lock=' + local_lock}"
    if fstype == "beegfs":
        return "file", "BeeGFS (flock is node-local unless tuneUseGlobalFileLocks is set on every client)"
    if fstype.startswith("fuse"):
        return "file", f"{fstype} (a FUSE file system: flock reaches this node only)"
    return "flock", fstype or "file system unknown"


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (tells a reused pid apart); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def holder_record(**extra) -> dict:
    """Who holds a lock: host, pid, start time, SLURM job; plus ``extra``."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **extra,
    }


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    text = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
    return text + (f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else "")


def _read_record(path: Path) -> dict | None:
    """A lock file's record; None when it is empty or not one (yet: its creator may be writing it)."""
    try:
        text = path.read_bytes()[: RECORD_BYTES * 4].decode("utf-8", errors="replace").strip()
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record else None


def _dead_here(record: dict) -> bool:
    """The holder ran on this host and its process is gone (or its pid now belongs to another process)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    start = _process_start(record["pid"])
    return start is None or (record.get("pid_start") is not None and start != record.get("pid_start"))


class DirLock:
    """The lock ``<directory>/<name>``: :meth:`acquire` it, keep it while the work lives, :meth:`release`.

    ``busy(holder)`` words the error a second taker gets (``holder`` described in words).
    """

    def __init__(self, directory: str | os.PathLike, name: str, busy: Callable[[str], str]):
        self.directory = Path(directory)
        self.path = self.directory / name
        self.busy = busy
        self.fd: int | None = None  # flock: the locked descriptor (children may inherit it)
        self.kind: LockKind | None = None
        self._token: str | None = None
        self._holder: dict = {}
        self._beat = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ taking
    def acquire(self, wait_s: float = 0.0, wait_for: Callable[[dict], bool] | None = None) -> DirLock:
        """Take the lock, or raise :class:`LockBusy` naming its holder. A holder that ``wait_for(holder)``
        accepts (a previous attempt of the same job) is waited for, up to ``wait_s``."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CineSceneError(f"cannot create {self.directory}: {exc.strerror or exc}") from None
        kind, why = lock_kind(self.directory)
        if kind == "flock" and self._take_flock(wait_s, wait_for):
            return self
        if kind == "flock":  # flock refused on this file system: the lock file works everywhere
            why = "flock is not supported there"
        _log.debug("%s: a lock file (%s)", self.path, why)
        self._take_file(wait_s, wait_for)
        return self

    def _not_a_lock(self, exc: OSError | None) -> CineSceneError:
        """The lock cannot be created: a directory, a symlink (never followed: it could point at any file
        this process may write) or another file type in its place, or no permission."""
        if os.path.islink(self.path) or (os.path.lexists(self.path) and not os.path.isfile(self.path)):
            return CineSceneError(
                f"{self.path} is not a lock file (a symlink, a directory or a device: never followed); move "
                "it away"
            )
        return CineSceneError(f"cannot create the lock {self.path}: {exc.strerror if exc else 'unknown'}")

    def _busy(self, holder: dict | None) -> LockBusy:
        return LockBusy(self.busy(describe(holder)))

    def _wait_for_holder(self, holder: dict | None, wait_s: float, wait_for, deadline: float | None) -> float:
        """The lock is held by ``holder``: LockBusy unless ``wait_for(holder)`` allows waiting (for at most
        ``wait_s`` from the first call, logged once); else one poll's sleep. Returns the deadline."""
        if not holder or wait_for is None or not wait_for(holder):
            raise self._busy(holder) from None
        if deadline is None:
            _log.info(
                "%s is held by %s; waiting up to %.0f s for it to end", self.path, describe(holder), wait_s
            )
            deadline = time.monotonic() + wait_s
        if time.monotonic() > deadline:
            raise self._busy(holder) from None
        time.sleep(POLL_S)
        return deadline

    def _take_flock(self, wait_s: float, wait_for) -> bool:
        """True when held; False when flock is unsupported here (the caller falls back to a lock file)."""
        created = False
        try:
            try:
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
                )
                created = True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise self._not_a_lock(exc) from None
        try:
            deadline = None
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno in FLOCK_UNSUPPORTED:
                        os.close(fd)
                        if created:  # empty and ours: the lock file is created anew, exclusively
                            os.unlink(self.path)
                        return False
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise CineSceneError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
                holder = _read_record(self.path)
                deadline = self._wait_for_holder(holder, wait_s, wait_for, deadline)
            current = _read_record(self.path)
            if current and current.get("kind") == _FILE_KIND and not self._stale_file(current, confirm=False):
                raise self._busy(current)  # a lock-file holder on a node that mounts this differently
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_record(kind="flock")) + "\n").encode(), 0)
        except BaseException:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        self.fd, self.kind = fd, "flock"
        return True

    def _record(self) -> bytes:
        record = {**self._holder, "beat": self._beat, "beat_at": time.time()}
        data = json.dumps(record).encode()
        return data.ljust(RECORD_BYTES) if len(data) < RECORD_BYTES else data

    def _take_file(self, wait_s: float, wait_for) -> None:
        self._token = secrets.token_hex(8)
        self._holder = holder_record(kind=_FILE_KIND, token=self._token)
        self._holder["host"] = str(self._holder["host"])[:200]
        deadline = None
        while True:
            try:
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
                )
            except FileExistsError:
                try:
                    regular = stat.S_ISREG(os.lstat(self.path).st_mode)
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if not regular:
                    raise self._not_a_lock(None) from None
                holder = _read_record(self.path)
                if holder is not None and holder.get("kind") != _FILE_KIND:  # a flock run's, left by design
                    self._break(holder, quiet=True)
                    continue
                if self._stale_file(holder, confirm=True):
                    self._break(holder)
                    continue
                holder = _read_record(self.path) or holder
                deadline = self._wait_for_holder(holder, wait_s, wait_for, deadline)
                continue
            except OSError as exc:
                raise self._not_a_lock(exc) from None
            try:
                os.pwrite(fd, self._record(), 0)
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                self._unlink_own()
                raise CineSceneError(f"cannot write the lock {self.path}: {exc.strerror or exc}") from None
            break
        self.fd, self.kind = fd, "file"
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"lock-heartbeat {self.path}", daemon=True
        )
        self._thread.start()
        atexit.register(self.release)

    def _stale_file(self, holder: dict | None, confirm: bool) -> bool:
        """Whether a lock file's holder is gone (module doc). Without ``confirm`` an old heartbeat is enough;
        with it, the heartbeat (or an unreadable record: one being written) is watched for CONFIRM_S first."""
        if holder is not None:
            if _dead_here(holder):
                return True
            if holder.get("host") == socket.gethostname():
                return False  # alive here: a stopped process keeps its lock
            beat_at = holder.get("beat_at")
            if isinstance(beat_at, (int, float)) and time.time() - beat_at < STALE_S:
                return False  # a recent heartbeat (by its holder's clock): alive, or only just gone
        if not confirm:
            return True
        _log.info("%s: %s looks gone; watching its lock for %.0f s", self.path, describe(holder), CONFIRM_S)
        end = time.monotonic() + CONFIRM_S
        while time.monotonic() < end:
            time.sleep(POLL_S)
            now = _read_record(self.path)
            if (now is None) != (holder is None) or (
                now is not None
                and (now.get("token"), now.get("beat")) != (holder.get("token"), holder.get("beat"))
            ):
                return False  # it moved (or changed hands): not stale
        return True

    def _break(self, stale: dict | None, quiet: bool = False) -> None:
        """Remove a stale lock file, unless it changed hands since it was judged (then leave it be)."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self._token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # released (or broken by another taker) meanwhile
        now = _read_record(aside)
        if (now or {}).get("token") != (stale or {}).get("token"):
            try:  # it was a new holder's: put it back (unless yet another one appeared)
                os.link(aside, self.path)
            except OSError:
                pass
            os.unlink(aside)
            return
        os.unlink(aside)
        if not quiet:
            _log.warning("%s: removed the lock of %s, whose holder is gone", self.path, describe(stale))

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if os.stat(self.path).st_ino != os.fstat(self.fd).st_ino:
                    _log.error(
                        "%s: this process's lock was taken over (its heartbeat had stopped)", self.path
                    )
                    return
                self._beat += 1
                os.pwrite(self.fd, self._record(), 0)
            except (OSError, TypeError):
                return  # released meanwhile

    # ---------------------------------------------------------------- release
    def _unlink_own(self) -> None:
        holder = _read_record(self.path)
        if holder is not None and holder.get("token") == self._token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        if self.kind == "file" and self._holder.get("pid") != os.getpid():
            return  # a forked child exiting (its parent's atexit hooks came along): the lock is the parent's
        if self.kind == "file":
            self._stop.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=2 * HEARTBEAT_S)
            if self._token is not None:
                self._unlink_own()
            atexit.unregister(self.release)
        fd, self.fd = self.fd, None
        os.close(fd)  # flock: closing the last descriptor releases the lock
