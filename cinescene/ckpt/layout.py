"""Names and places of a checkpoint directory, and the `latest` pointer read as untrusted data.

``<checkpoint.dir>`` (default ``<run.dir>/checkpoints``: :func:`.locate.checkpoints_dir`)::

    step_00000040/
        zero/                           DeepSpeed ZeRO shards (our checkpoint engine writes them)
        rank_states/rank_00000.safetensors   one per rank: RNG states, callback states (EMA shard)
        config.yaml                     the resolved config, secrets scrubbed
        trainer_state.json              the trainer record (:mod:`.record`)
        manifest.json                   every file above with its size and digest; written last
    latest                              "step_00000040\\n", replaced atomically

`latest` is a name, never a path: it must name a step directory directly
inside its own checkpoints directory. An absolute path, ``..``, a symlinked
`latest` or a step directory that is a symlink leading elsewhere is refused
(treated like a damaged pointer), never followed.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cinescene.config.base import ConfigError
from cinescene.config.paths import resolved
from cinescene.durable import TMP_PREFIX as TMP_PREFIX  # the prefix of every temporary name
from cinescene.run_dir import CONFIG

from .errors import DamagedCheckpointError
from .manifest import MANIFEST

STEP_DIR = re.compile(r"^step_(\d{8})$")
DELETE_PREFIX = ".tmp-delete-"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
RANK_STATES = "rank_states"
ZERO_TAG = "zero"
CONFIG_FILE = CONFIG  # the run's config, under the name the run directory gives it
_POINTER_MAX_BYTES = 256


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(path: Path) -> int | None:
    match = STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def rank_state_name(rank: int) -> str:
    return f"rank_{rank:05d}.safetensors"


def inside(root: Path, path: Path) -> bool:
    """Whether ``path``, symlinks resolved, is an entry directly inside ``root`` (a symlink loop is not)."""
    try:
        return Path(path).resolve().parent == Path(root).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False


def enclosing_step_dir(path: str | os.PathLike) -> Path | None:
    """The checkpoint step directory that ``path`` is or lies inside, symlinks resolved (a committed
    ``step_XXXXXXXX`` or one being written, ``.tmp-step_XXXXXXXX``, holding any checkpoint part), or None.
    Nothing may be written there: every file of a step is listed in its manifest (`ckpt info --verify`)."""
    where = resolved(path)
    for candidate in (where, *where.parents):
        name = candidate.name.removeprefix(TMP_PREFIX)
        if STEP_DIR.match(name) and any(
            (candidate / part).exists() for part in (TRAINER_STATE, MANIFEST, ZERO_TAG, RANK_STATES)
        ):
            return candidate
    return None


def refuse_inside_checkpoint(path: str | os.PathLike, key: str) -> None:
    """ConfigError(key) when an output path is or lies inside a checkpoint step directory."""
    step = enclosing_step_dir(path)
    if step is not None:
        raise ConfigError(
            key,
            f"{str(path)!r} is inside the checkpoint {step}: a checkpoint holds exactly what its manifest "
            "lists; write elsewhere",
        )


def is_complete(path: Path) -> bool:
    """A committed step directory: its name, a directory of its own, the trainer record present."""
    path = Path(path)
    return step_of(path) is not None and path.is_dir() and (path / TRAINER_STATE).is_file()


def read_pointer(root: Path) -> Path | None:
    """The step directory `latest` names, or None without a `latest`; DamagedCheckpointError if unusable."""
    pointer = Path(root) / LATEST
    try:
        fd = os.open(pointer, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink (never followed)
        problem = (
            "is a symlink (never followed)" if os.path.islink(pointer) else f"unreadable ({exc.strerror})"
        )
        raise DamagedCheckpointError(pointer, problem) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedCheckpointError(pointer, "is not a regular file")
        raw = os.read(fd, _POINTER_MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DamagedCheckpointError(pointer, "holds bytes that are not UTF-8 text") from None
    if len(raw) > _POINTER_MAX_BYTES or os.sep in name or name in ("", ".", ".."):
        raise DamagedCheckpointError(
            pointer,
            f"names {name[:80]!r}, not a step directory inside {root} "
            "(a path outside its checkpoints directory is never followed)",
        )
    if STEP_DIR.match(name) is None:
        raise DamagedCheckpointError(pointer, f"names {name!r}, which is not a step directory name")
    target = Path(root) / name
    if target.is_symlink() and not inside(root, target):
        raise DamagedCheckpointError(
            pointer, f"names {name}, a symlink leading outside {root} (never followed)"
        )
    if not is_complete(target):
        raise DamagedCheckpointError(pointer, f"names {name}, which is not a complete checkpoint")
    return target
