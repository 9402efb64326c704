"""Our DeepSpeed checkpoint engine: shards handed to our save path, read back as data only.

DeepSpeed routes every ZeRO shard it saves or loads through
``engine.checkpoint_engine``. Its default one saves with ``torch.save`` and
loads with ``torch.load(weights_only=False)``, which runs whatever a pickle
asks for. :func:`install` replaces it on a built engine with
:class:`SafeCheckpointEngine`:

* ``save`` writes nothing: it hands each (path, state) to the save path
  (:meth:`SafeCheckpointEngine.take_saved`), which writes it with
  :func:`write_shard` -- hashing the bytes as they are written, so the
  manifest needs no second read -- right away or, for ``checkpoint.async``,
  from a host copy on a background thread;
* loads go through :func:`~.torchfile.torch_load` (weights only, the DeepSpeed
  allowlist).

DeepSpeed's recovery scripts (``zero_to_fp32.py``), which it copies into every
save, are not copied at all: a checkpoint holds data, not code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine

from .manifest import FileRecord, write_hashed
from .torchfile import torch_load


class SafeCheckpointEngine(CheckpointEngine):
    def __init__(self) -> None:
        super().__init__(None)
        self.name = "CineSceneSafeCheckpointEngine"
        self._saved: list[tuple[Path, Any]] = []

    def create(self, info: CheckpointCommitInfo) -> None:
        pass

    def save(self, state_dict, path: str) -> None:
        self._saved.append((Path(path), state_dict))

    def load(self, path: str, map_location=None):
        return torch_load(path, map_location=map_location)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        return True

    def take_saved(self) -> list[tuple[Path, Any]]:
        """The (path, state) pairs DeepSpeed saved since the last call, in its order; nothing is written yet.

        The states hold DeepSpeed's live tensors: write or copy them before the next optimizer step.
        """
        saved, self._saved = self._saved, []
        return saved


def write_shard(path: Path, state: Any) -> FileRecord:
    """Write one DeepSpeed state as DeepSpeed would (``torch.save``), hashed while written, fsynced."""
    return write_hashed(path, lambda writer: torch.save(state, writer))


def install(engine) -> SafeCheckpointEngine:
    """Give ``engine`` our checkpoint engine (once); returns it."""
    if not isinstance(engine.checkpoint_engine, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine()
        # DeepSpeed copies its recovery scripts into every save (rank 0, between two of its barriers):
        # code has no place in a checkpoint, and a failed copy there would leave the ranks out of step.
        engine._copy_recovery_script = lambda save_path: None
    return engine.checkpoint_engine
