"""User-facing errors: printed as one line by the CLI, never as a traceback."""

from __future__ import annotations


class CineSceneError(RuntimeError):
    """Something a user can fix (a path, a corrupt file, a world size that does not fit).

    The CLI prints ``cinescene <command>: error: <message>`` and exits with
    ``exit_code`` (1 unless a subclass says otherwise).
    """

    exit_code = 1
