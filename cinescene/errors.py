"""User-facing errors: printed as one line by the CLI, never as a traceback."""

from __future__ import annotations

import os
from collections.abc import Mapping


class CineSceneError(RuntimeError):
    """Something a user can fix (a path, a corrupt file, a world size that does not fit).

    The CLI prints ``cinescene <command>: error: <message>`` and exits with
    ``exit_code`` (1 unless a subclass says otherwise).
    """

    exit_code = 1


def env_int(name: str, environ: Mapping[str, str] | None = None) -> int:
    """The integer in environment variable ``name`` (which must be set); anything else (``RANK=abc``,
    ``SLURM_ARRAY_TASK_ID=``) is a one-line CineSceneError naming the variable."""
    value = (os.environ if environ is None else environ)[name]
    try:
        return int(value)
    except ValueError:
        raise CineSceneError(f"environment variable {name}={value!r} is not an integer") from None
