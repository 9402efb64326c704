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

The files themselves (layout, trainer record, manifest, safe readers, the
weights a run holds) are :mod:`cinescene.ckpt`.
"""

from __future__ import annotations

from .background import CheckpointWriteError
from .cadence import CheckpointCadence
from .manager import CheckpointManager, validate
from .resume import RunFacts, Start, check_compatible, parameter_manifest, rank_state_now, resume

__all__ = [
    "CheckpointCadence",
    "CheckpointWriteError",
    "CheckpointManager",
    "RunFacts",
    "Start",
    "check_compatible",
    "parameter_manifest",
    "rank_state_now",
    "resume",
    "validate",
]
