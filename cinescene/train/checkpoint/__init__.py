"""The trainer's checkpoints (DESIGN.md section 4): atomic saves, `latest`, retention, resume, resharding.

- :mod:`.manager`: the save protocol, recovery after a killed save, retention,
  and choosing the checkpoint to resume (falling back past damaged ones).
- :mod:`.resume`: :func:`resume`, the one place a run starts or resumes, and
  :class:`RunFacts`, what every save records about the run.
- :mod:`.reshard`: ZeRO-3 shards of another world size loaded straight into the engine.
- :mod:`.cadence`: when to save.
- :mod:`.bench`: ``cinescene bench checkpoint``, the save and load paths against ``dd``.

The files themselves (layout, trainer record, manifest, safe readers) are
:mod:`cinescene.ckpt`. ``consolidated_state_dict`` and ``read_trainer_state``
are kept here for the sampling and evaluation tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from cinescene.ckpt.layout import is_complete, step_dir_name, step_of
from cinescene.ckpt.record import TrainerRecord, read_record
from cinescene.ckpt.weights import consolidated_state_dict, weights_digest

from .cadence import CheckpointCadence
from .manager import CheckpointManager, validate
from .resume import RunFacts, Start, check_compatible, parameter_manifest, rank_state_now, resume


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A step directory's trainer record as a plain dict (checked: a damaged file is a one-line error)."""
    from dataclasses import asdict

    return asdict(read_record(path))


__all__ = [
    "CheckpointCadence",
    "CheckpointManager",
    "RunFacts",
    "Start",
    "TrainerRecord",
    "check_compatible",
    "consolidated_state_dict",
    "is_complete",
    "parameter_manifest",
    "rank_state_now",
    "read_record",
    "read_trainer_state",
    "resume",
    "step_dir_name",
    "step_of",
    "validate",
    "weights_digest",
]
