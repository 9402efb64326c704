"""Where a command may write: the one check every output location goes through.

An output location (``run.dir``, ``checkpoint.dir``, a sweep's ``run_root``,
``--out`` of the data, sample, eval and export commands) is refused when, with
``..``, ``.`` and symlinks resolved, it is

- the file system root, or inside a system directory (:data:`SYSTEM_DIRECTORIES`:
  ``checkpoint.dir=../../../../etc``, ``--out /dev/null``);
- the working directory's parent or any directory above it (``run_root: ../../..``:
  a run would scatter its files over the tree the command runs in).

Two locations are the same place when they resolve to the same path
(``runs/a``, ``./runs/a/`` and a symlink to it): :func:`resolved`. A command
never writes into what it reads (:func:`check_separate`) and never writes two
outputs, or an output and an input, to one file (:func:`check_distinct`).
:func:`kind_problem` words a path that is not the file or directory expected.
No torch here: the config layer runs before anything heavy is imported.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .base import ConfigError

# Top-level directories of the operating system: nothing of a run belongs in them.
SYSTEM_DIRECTORIES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/sbin",
    "/sys",
    "/usr",
)


def resolved(path: str | os.PathLike) -> Path:
    """``path`` absolute, with ``~``, ``..``, ``.`` and symlinks resolved as far as it exists."""
    path = Path(path).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: judge the spelled path
        return Path(os.path.abspath(path))


def output_location_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` may not receive a command's output (module doc), or None."""
    where = resolved(path)
    if where == Path(where.anchor):
        return "the file system root"
    for system in SYSTEM_DIRECTORIES:
        if where == Path(system) or Path(system) in where.parents:
            return f"inside the system directory {system}"
    here = resolved(Path.cwd())
    if where in here.parents:
        return f"a directory above the working directory {here}"
    return None


def check_output_location(path: str | os.PathLike | None, key: str) -> None:
    """ConfigError(key) when ``path`` is no place for output (module doc); None passes."""
    if path is None:
        return
    problem = output_location_problem(path)
    if problem is not None:
        raise ConfigError(
            key, f"{str(path)!r} resolves to {resolved(path)}, {problem}: choose a directory of its own"
        )


def check_run_locations(cfg) -> None:
    """Every place a training run writes (``run.dir``, ``checkpoint.dir``, generated data): checked by the
    commands that start or submit a run, before anything is written (not by ``validate()``: a config read
    back from a checkpoint is judged where it was written, not where it is read)."""
    check_output_location(cfg.run.dir, "run.dir")
    check_output_location(cfg.checkpoint.dir, "checkpoint.dir")
    if cfg.data.generate:
        check_output_location(cfg.data.train_shards, "data.train_shards")
        check_output_location(cfg.data.synth.out, "data.synth.out")


def check_separate(src: str | os.PathLike, out: str | os.PathLike, src_key: str, out_key: str) -> None:
    """ConfigError(out_key) when an output directory is its input directory or lies inside or above it: a
    command must not write into what it reads (``data prepare --out`` equal to ``--src``)."""
    a, b = resolved(src), resolved(out)
    if a == b or a in b.parents or b in a.parents:
        relation = "is" if a == b else "lies inside" if a in b.parents else "holds"
        raise ConfigError(out_key, f"{str(out)!r} {relation} {src_key} {str(src)!r}: write somewhere else")


def kind_problem(path: str | os.PathLike, want: str) -> str | None:
    """Why ``path`` is not the ``want`` ("file" or "directory") a command reads, in words ("does not exist",
    "is a directory", "is a symlink loop", "is a device or special file"), or None when it is one. A thing
    that exists but is of the wrong kind is never reported as "not found"."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop"
        if exc.errno == errno.ENAMETOOLONG:
            return "has a name too long for the file system"
        if exc.errno == errno.ENOTDIR:
            return "does not exist (a part of its path is a file)"
        if exc.errno == errno.ENOENT:
            return "is a symlink to nothing" if path.is_symlink() else "does not exist"
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return None if want == "directory" else "is a directory, not a file"
    if stat.S_ISREG(mode):
        return None if want == "file" else "is a file, not a directory"
    return "is a device or special file, not a " + want


def check_distinct(outputs: dict[str, str | os.PathLike], inputs: dict[str, str | os.PathLike]) -> None:
    """ConfigError when two of a command's outputs are one file, or an output is one of its inputs
    (``sample --out a.json`` whose sidecar is a.json; ``--out cams.mp4`` beside ``--camera cams.json``):
    a command never overwrites what it just wrote or what it reads."""
    seen: dict[Path, str] = {}
    for key, path in outputs.items():
        where = resolved(path)
        if where in seen:
            raise ConfigError(key, f"{str(path)!r} is also {seen[where]}: give each output its own file")
        seen[where] = key
    for key, path in inputs.items():
        where = resolved(path)
        if where in seen:
            raise ConfigError(seen[where], f"{where} is the input {key}: it would be overwritten")
