"""The two ways a checkpoint file can be unusable; both name the file."""

from __future__ import annotations

from pathlib import Path

from cinescene.errors import CineSceneError


class DamagedCheckpointError(CineSceneError):
    """A checkpoint file is missing, truncated, altered or not what its name says.

    Resume treats it as an accident (a save killed mid-write, a bad disk, a
    partial copy) and falls back to the previous complete checkpoint.
    """

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafeCheckpointError(CineSceneError):
    """A checkpoint file would import or call something other than tensors and plain data.

    Never loaded, never fallen back from silently: a checkpoint that carries
    code is an attack or a foreign format, and the run stops with this one line.
    """

    def __init__(self, path: Path | str, what: str):
        self.path = Path(path)
        super().__init__(
            f"refusing to load {self.path}: it would import {what}, which is not tensor data "
            "(checkpoint files are read as data only, never as code)"
        )
