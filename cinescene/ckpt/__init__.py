"""Checkpoint files as data: layout, trainer record, manifest, safe readers, export and inspection.

Nothing here unpickles code: ZeRO shards are read by :mod:`.torchfile`
(an allowlisted unpickler, tensors read by byte range), rank states are
safetensors plus JSON (:mod:`.rank_state`), the trainer record and the
manifest are JSON. The trainer's side (saving, choosing, resuming,
resharding into an engine) is :mod:`cinescene.train.checkpoint`.

- :func:`consolidated_state_dict` / :class:`TrainedWeights` (:mod:`.weights`):
  the trained (or EMA) weights of a run, checkpoints or step directory.
- :func:`read_record` (:mod:`.record`): the typed trainer record.
- :func:`cinescene.ckpt.export.export` and :func:`cinescene.ckpt.export.load_exported_model`:
  consolidated safetensors in Wan's or diffusers' layout, and our model built from them.
- :func:`cinescene.ckpt.info.describe` / :func:`cinescene.ckpt.info.verify_checkpoint`.
"""

from .errors import DamagedCheckpointError, UnsafeCheckpointError
from .layout import resolve_step_dir
from .record import TrainerRecord, read_record
from .weights import TrainedWeights, consolidated_state_dict, weights_digest

__all__ = [
    "DamagedCheckpointError",
    "TrainedWeights",
    "TrainerRecord",
    "UnsafeCheckpointError",
    "consolidated_state_dict",
    "read_record",
    "resolve_step_dir",
    "weights_digest",
]
