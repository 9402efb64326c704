"""Checkpoint files as data: layout, trainer record, manifest, safe readers, export and inspection.

Nothing here unpickles code: ZeRO shards are read by :mod:`.torchfile`
(an allowlisted unpickler, tensors read by byte range), rank states are
safetensors plus JSON (:mod:`.rank_state`), the trainer record and the
manifest are JSON. The trainer's side (saving, choosing, resuming,
resharding into an engine) is :mod:`cinescene.train.checkpoint`.

- where a checkpoint is (:mod:`.locate`): :func:`checkpoints_dir` (a run's checkpoint directory),
  :func:`latest_step_dir` (its latest complete step), :func:`resolve_checkpoint` /
  :func:`resolve_step_dir` (any path a user gives, one documented search order).
- :func:`checkpoint_config` (:mod:`.config`): the one reader of a checkpoint's or an export's config.
- :func:`consolidated_state_dict` / :class:`TrainedWeights` (:mod:`.weights`):
  the trained (or EMA) weights of a run, checkpoints or step directory.
- :func:`read_record` (:mod:`.record`): the typed trainer record.
- :func:`cinescene.ckpt.export.export` and :func:`cinescene.ckpt.export.load_exported_model`:
  consolidated safetensors in Wan's or diffusers' layout, and our model built from them.
- :func:`cinescene.ckpt.info.describe` / :func:`cinescene.ckpt.info.verify_checkpoint`.
"""

from .config import checkpoint_config
from .errors import DamagedCheckpointError, UnsafeCheckpointError
from .locate import (
    CheckpointSource,
    checkpoints_dir,
    latest_step,
    latest_step_dir,
    resolve_checkpoint,
    resolve_step_dir,
)
from .record import TrainerRecord, read_record

# torch loads with these only (PEP 562): finding a checkpoint and reading its record or config stay light,
# as the launcher and the SLURM job need them before any rank starts.
_WEIGHTS = ("TrainedWeights", "consolidated_state_dict", "weights_digest")


def __getattr__(name: str):
    if name in _WEIGHTS:
        from . import weights

        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointSource",
    "DamagedCheckpointError",
    "TrainedWeights",
    "TrainerRecord",
    "UnsafeCheckpointError",
    "checkpoint_config",
    "checkpoints_dir",
    "consolidated_state_dict",
    "latest_step",
    "latest_step_dir",
    "read_record",
    "resolve_checkpoint",
    "resolve_step_dir",
    "weights_digest",
]
