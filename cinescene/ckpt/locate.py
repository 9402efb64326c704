"""Where a checkpoint is: a run's checkpoint directory, its latest complete step, and any path a user gives.

A PATH on the command line (``ckpt info|export``, ``sample``, ``eval``,
``checkpoint.resume``) is looked at in this order, and the first rule that
fits decides:

1. an export directory (it holds ``cinescene.json``): the export, where
   exports are accepted (``sample``, ``eval``), else a one-line refusal;
2. a step directory (``step_XXXXXXXX``): itself, which must be complete
   (its ``trainer_state.json`` present);
3. a `latest` pointer file: the step directory it names;
4. a directory holding `latest` (a checkpoints directory): the step it names;
5. a directory whose ``checkpoints/`` holds `latest` (a run directory with the
   default ``checkpoint.dir``): the step it names.

Anything else is one line saying what PATH is not. `latest` is read as
untrusted data (:func:`~.layout.read_pointer`): a pointer that is damaged or
names anything but a complete step directory beside it is an error here,
never followed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cinescene.config.paths import kind_problem
from cinescene.errors import CineSceneError
from cinescene.run_dir import CHECKPOINTS, RunDir

from .errors import DamagedCheckpointError
from .layout import LATEST, TRAINER_STATE, is_complete, read_pointer, step_of
from .record import read_record

STEP, EXPORT = "step", "export"

# The export directory's self-description (written by :mod:`.export`, read here and there).
DESCRIPTION = "cinescene.json"
RUN_CONFIG = "cinescene_config.yaml"  # the run's config, as its checkpoint saved it (data and eval settings)
EXPORT_FORMAT = "cinescene-export"
EXPORT_VERSION = 1
_DESCRIPTION_MAX_BYTES = 16 << 20  # a model config and file lists; far below this


def checkpoints_dir(cfg) -> Path:
    """The run's checkpoint directory: ``checkpoint.dir``, else ``<run.dir>/checkpoints``."""
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else RunDir(cfg.run.dir).checkpoints


def latest_step_dir(root: Path | str) -> Path | None:
    """The complete step directory `latest` names in ``root``; None without one or when it is unusable."""
    try:
        return read_pointer(Path(root))
    except DamagedCheckpointError:
        return None


def latest_step(root: Path | str) -> int | None:
    """The step of :func:`latest_step_dir` (None without one)."""
    found = latest_step_dir(root)
    return None if found is None else step_of(found)


@dataclass(frozen=True)
class CheckpointSource:
    path: Path  # the step directory, or the export directory
    kind: str  # STEP or EXPORT
    step: int
    trainable: list[str] | None = None  # step directories: the parameters the run trained
    ema: bool | None = None  # exports: whether the weights are the EMA

    def describe(self) -> str:
        return f"{self.path} (step {self.step}{', exported' if self.kind == EXPORT else ''})"


def read_description(export_dir: Path | str) -> dict:
    """An export's ``cinescene.json`` (format and version checked); one-line errors otherwise."""
    path = Path(export_dir) / DESCRIPTION
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_DESCRIPTION_MAX_BYTES + 1)
    except FileNotFoundError:
        raise CineSceneError(f"{export_dir} is not a CineScene export (no {DESCRIPTION})") from None
    except OSError as exc:
        raise CineSceneError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if len(raw) > _DESCRIPTION_MAX_BYTES:
        raise CineSceneError(f"{path} is corrupt: larger than {_DESCRIPTION_MAX_BYTES} bytes")
    try:
        description = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CineSceneError(f"{path} is corrupt: {exc}") from None
    if (
        not isinstance(description, dict)
        or description.get("format") != EXPORT_FORMAT
        or description.get("version") != EXPORT_VERSION
    ):
        raise CineSceneError(f"{path} is not a version-{EXPORT_VERSION} CineScene export")
    return description


def _export(given: Path) -> CheckpointSource:
    description = read_description(given)
    step, ema = description.get("step", 0), description.get("ema")
    if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0 and isinstance(ema, bool)):
        raise CineSceneError(f"{given / DESCRIPTION} is corrupt: its step or ema entry is not valid")
    return CheckpointSource(given, EXPORT, step, ema=ema)


def _pointer_root(given: Path) -> Path | None:
    """The directory whose `latest` rule 3, 4 or 5 of the module doc reads, or None."""
    if given.name == LATEST and (given.is_file() or given.is_symlink()):
        return given.parent
    for root in (given, given / CHECKPOINTS):
        if root.is_dir() and ((root / LATEST).exists() or (root / LATEST).is_symlink()):
            return root
    return None


def resolve_checkpoint(path: Path | str, *, exports: bool = True) -> CheckpointSource:
    """What PATH names, by the search order of the module doc; one-line errors otherwise."""
    given = Path(path)
    problem = kind_problem(given, "directory")
    if problem is not None and problem.startswith("does not exist"):
        raise CineSceneError(
            f"checkpoint not found: {given} {problem} (no such run, checkpoints, step or export directory)"
        )
    if problem not in (None, "is a file, not a directory"):  # a file may be a `latest` pointer (rule 3)
        raise CineSceneError(f"{given} {problem}: not a run, checkpoints, step or export directory")
    if given.is_dir() and (given / DESCRIPTION).is_file():
        if not exports:
            raise CineSceneError(
                f"{given} is an export ({DESCRIPTION}); this needs a run, checkpoints or step directory"
            )
        return _export(given)
    if step_of(given) is not None:
        if not is_complete(given):
            raise CineSceneError(f"{given} is not a complete checkpoint (no {TRAINER_STATE})")
        step_dir = given
    else:
        root = _pointer_root(given)
        if root is None:
            steps = sorted(p.name for p in given.glob("step_*") if is_complete(p)) if given.is_dir() else []
            hint = (
                f"; it holds step directories but no `{LATEST}`: give one (the newest is {steps[-1]})"
                if steps
                else ""
            )
            raise CineSceneError(
                f"{given} is not a run, checkpoints, step or export directory (no {CHECKPOINTS}/{LATEST}, "
                f"no {LATEST}, no step_XXXXXXXX directory, no {DESCRIPTION}){hint}"
            )
        step_dir = read_pointer(root)  # DamagedCheckpointError names the pointer
        if step_dir is None:  # removed since we looked: a run's start-up replaced a damaged one
            raise CineSceneError(f"{root / LATEST} disappeared while reading it; try again")
    record = read_record(step_dir)
    return CheckpointSource(step_dir, STEP, record.step, trainable=list(record.trainable))


def resolve_step_dir(path: Path | str) -> Path:
    """The step directory PATH names (run, checkpoints, step directory or `latest`; not an export)."""
    return resolve_checkpoint(path, exports=False).path
