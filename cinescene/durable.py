"""Atomic and durable writes: the one helper for every file a user keeps.

A file is written under a temporary name in its own directory, flushed and
fsynced, renamed over its final name, and the directory is fsynced, so after
a crash or a power loss the path holds either the old file or the whole new
one, never a part, and a command that said "done" has its output on disk.
Used by checkpoints (``latest``, the step tree), exports, samples, evaluation
reports, data manifests and SLURM records. No torch here: the SLURM batch side
and the config layer import it.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

# Temporary names start with this: a directory's owner recognises (and removes) what a killed writer left.
TMP_PREFIX = ".tmp-"


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a file system that cannot fsync this kind of file
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root`` (``root`` included), files before their directory."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(dirpath)


def temporary_name(path: Path) -> Path:
    """A per-process temporary name beside ``path``."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")


def commit(tmp: Path, path: Path) -> None:
    """fsync the finished ``tmp`` (a file or a directory tree), rename it to ``path``, fsync the directory."""
    if tmp.is_dir():
        fsync_tree(tmp)
    else:
        fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably; ``mode`` (0o600) is set before it is visible."""
    path = Path(path)
    tmp = temporary_name(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_path(path.parent)


def write_json_atomic(
    path: str | os.PathLike, obj: Any, *, compact: bool = False, mode: int | None = None
) -> None:
    """``obj`` as JSON (sorted keys; one line when ``compact``, else indented), atomically and durably."""
    text = (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
        if compact
        else json.dumps(obj, sort_keys=True, indent=1, default=str)
    )
    write_atomic(path, text + "\n", mode=mode)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and fsync it (records that only grow: a run's submitted jobs)."""
    with open(path, "a") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())
