"""The trainer's checkpoints (DESIGN.md section 4): atomic saves, `latest`, retention, resume, resharding.

- :mod:`.manager`: recovery after a killed save, choosing the checkpoint to
  resume (falling back past damaged ones), and the save side's entry points.
- :mod:`.saving`: the save protocol, synchronous or with ``checkpoint.async``
  (:mod:`.host_copy` the host copy, :mod:`.background` the writer thread, the
  ranks' agreement and one-line errors), the commit and retention;
  :mod:`.save_points` its test hooks.
- :mod:`.resume`: :func:`resume`, the one place a run starts or resumes, and
  :class:`RunFacts`, what every save records about the run.
- :mod:`.reshard`: ZeRO-3 shards of another world size loaded straight into the engine.
- :mod:`.cadence`: when to save.

The files themselves (layout, trainer record, manifest, safe readers) are
:mod:`cinescene.ckpt`. ``consolidated_state_dict`` and ``read_trainer_state``
are kept here for the sampling and evaluation tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cinescene.ckpt.layout import is_complete, step_dir_name, step_of
from cinescene.ckpt.record import TrainerRecord, read_record
from cinescene.ckpt.weights import consolidated_state_dict, weights_digest

from .background import CheckpointWriteError
from .cadence import CheckpointCadence
from .manager import CheckpointManager, validate
from .resume import RunFacts, Start, check_compatible, parameter_manifest, rank_state_now, resume


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A step directory's trainer record as a plain dict (checked: a damaged file is a one-line error)."""
    from dataclasses import asdict

    return asdict(read_record(path))


__all__ = [
    "CheckpointCadence",
    "CheckpointWriteError",
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
