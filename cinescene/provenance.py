"""Which code produced a result: the git commit of the checkout ``cinescene`` runs from.

Recorded by each start of a SLURM job (``cinescene.slurm.environment``) and by the W&B run
(``cinescene.train.tracking``). No torch here: the batch side of a job imports it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 30
# The repository root of an editable install (a copy in site-packages has no checkout above it).
CODE_ROOT = Path(__file__).resolve().parents[1]


def git_state(path: Path = CODE_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (nulls when it is not one)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(path), *args],
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": bool(status.strip()) if status is not None else None}
