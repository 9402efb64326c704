"""Where a command may write: the one check every output location goes through.

An output location (``run.dir``, ``checkpoint.dir``, a sweep's ``run_root``,
``--out`` of the data, sample, eval and export commands) is refused when, with
``..``, ``.`` and symlinks resolved, it is

- the file system root, or inside a system directory (:data:`SYSTEM_DIRECTORIES`:
  ``checkpoint.dir=../../../../etc``, ``--out /dev/null``);
- the working directory's parent or any directory above it (``run_root: ../../..``:
  a run would scatter its files over the tree the command runs in).

Two locations are the same place when they resolve to the same path
(``runs/a``, ``./runs/a/`` and a symlink to it): :func:`same_place`.
No torch here: the config layer runs before anything heavy is imported.
"""

from __future__ import annotations

import os
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


def same_place(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return resolved(a) == resolved(b)


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
