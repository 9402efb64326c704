"""Stale build locks of torch's JIT extensions, left by a process killed while it held one.

DeepSpeed builds and loads its ops (on CPU: the shared-memory comm op, at
every start) through ``torch.utils.cpp_extension``, which guards a build
directory with a bare file, ``<build dir>/lock`` (``FileBaton``): created and
held open while building or loading, removed afterwards. A rank killed inside
that second (``kill -9`` of its launcher, a SLURM time limit) leaves the file
behind, and every later start on the machine then waits on it forever,
silently. :func:`clear_stale_build_locks` runs in each rank before DeepSpeed
is imported and removes such a file when no process on this machine holds it
open and it is older than :data:`LOCAL_STALE_S` (on a local file system) or
:data:`SHARED_STALE_S` (on a shared one, where a holder on another machine is
invisible from here); a younger one is waited for, with one log line.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from cinescene.log import get_logger

_log = get_logger("train")

# A lock nobody here holds is stale after this long on a local disk (a holder closes its file a moment
# before removing it: never take that moment for death) ...
LOCAL_STALE_S = 30.0
# ... and on a shared file system, where a build on another node holds it unseen: longer than any build.
SHARED_STALE_S = 900.0
SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "9p", "glusterfs", "fuse")
POLL_S = 1.0


def extensions_root() -> Path:
    """Where torch builds JIT extensions (TORCH_EXTENSIONS_DIR,
    else the user's cache), without importing torch."""
    explicit = os.environ.get("TORCH_EXTENSIONS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache).resolve() / "torch_extensions"


def _fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/self/mountinfo; '' if unknown)."""
    best, fs = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mount = fields[4]
                fstype = fields[fields.index("-") + 1]
                if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                    best
                ):
                    best, fs = mount, fstype
    except (OSError, ValueError, IndexError):
        return ""
    return fs


def _held_open(paths: list[str]) -> set:
    """Which of ``paths`` some process on this machine has open (by /proc/<pid>/fd)."""
    wanted, held = set(paths), set()
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(os.path.join(fd_dir, fd))
                except OSError:
                    continue
                if target in wanted:
                    held.add(target)
        except OSError:  # gone, or not ours to read
            continue
    return held


def clear_stale_build_locks(root: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the build locks no process holds; wait (bounded) for unheld ones too young to judge.

    Returns the removed paths.
    """
    root = root or extensions_root()
    removed: list[Path] = []
    announced = False
    while True:
        locks = [
            os.path.realpath(p)
            for p in glob.glob(str(root / "*" / "lock")) + glob.glob(str(root / "*/*/lock"))
        ]
        unheld = [p for p in locks if p not in _held_open(locks)]
        waiting = []
        for lock in unheld:
            try:
                age = (now or time.time()) - os.stat(lock).st_mtime
            except FileNotFoundError:
                continue
            stale_after = SHARED_STALE_S if _fs_type(Path(lock)).split(".")[0] in SHARED_FS else LOCAL_STALE_S
            if age < stale_after:
                waiting.append((lock, stale_after - age))
                continue
            try:
                os.remove(lock)
                removed.append(Path(lock))
                _log.warning(
                    "removed %s, a build lock no process holds (left by a killed process %.0f s ago)",
                    lock,
                    age,
                )
            except FileNotFoundError:
                pass
        if not waiting or now is not None:
            return removed
        if not announced:
            _log.info(
                "waiting up to %.0f s for build lock %s: no process here holds it",
                max(w for _, w in waiting),
                waiting[0][0],
            )
            announced = True
        time.sleep(POLL_S)
