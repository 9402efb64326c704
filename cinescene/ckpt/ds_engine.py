"""Our DeepSpeed checkpoint engine: shards written with their hashes, read back as data only.

DeepSpeed routes every ZeRO shard it saves or loads through
``engine.checkpoint_engine``. Its default one saves with ``torch.save`` and
loads with ``torch.load(weights_only=False)``, which runs whatever a pickle
asks for. :func:`install` replaces it on a built engine with
:class:`SafeCheckpointEngine`: saves hash the bytes as they are written
(the manifest needs no second read), loads go through
:func:`~.torchfile.torch_load` (weights only, the DeepSpeed allowlist).
"""

from __future__ import annotations

from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine

from .manifest import FileRecord, write_hashed
from .torchfile import torch_load


class SafeCheckpointEngine(CheckpointEngine):
    def __init__(self) -> None:
        super().__init__(None)
        self.name = "CineSceneSafeCheckpointEngine"
        self._written: dict[Path, FileRecord] = {}

    def create(self, info: CheckpointCommitInfo) -> None:
        pass

    def save(self, state_dict, path: str) -> None:
        self._written[Path(path)] = write_hashed(Path(path), lambda writer: torch.save(state_dict, writer))

    def load(self, path: str, map_location=None):
        return torch_load(path, map_location=map_location)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        return True

    def take_written(self) -> dict[Path, FileRecord]:
        """The files saved since the last call, with their sizes and hashes."""
        written, self._written = self._written, {}
        return written


def install(engine) -> SafeCheckpointEngine:
    """Give ``engine`` our checkpoint engine (once); returns it."""
    if not isinstance(engine.checkpoint_engine, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine()
    return engine.checkpoint_engine
