"""The trained weights of a checkpoint, one full tensor at a time: ZeRO-sharded fp32 or the EMA.

:class:`TrainedWeights` reads a step directory as data (the trainer record,
the ZeRO shards through :class:`~.zero.ZeroShards`, the EMA slices through
the rank files) and hands out each trainable parameter as a full fp32
tensor, so a caller that writes them out one by one never holds the model.
:func:`consolidated_state_dict` is the all-at-once form for small models and
tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import torch

from cinescene.errors import CineSceneError

from .errors import DamagedCheckpointError
from .layout import RANK_STATES, ZERO_TAG, rank_state_name
from .locate import resolve_step_dir
from .rank_state import RankStateFile
from .record import TrainerRecord, read_record
from .slices import cover, piece
from .zero import ZeroShards


class TrainedWeights:
    """The trainable parameters of one checkpoint (a run, checkpoints or step directory)."""

    def __init__(self, path: Path | str):
        self.path = resolve_step_dir(path)
        self.record: TrainerRecord = read_record(self.path)

    @cached_property
    def shards(self) -> ZeroShards:
        return ZeroShards(self.path / ZERO_TAG)

    def names(self) -> list[str]:
        """Trainable parameter names, in the model's order (each with shards of the recorded shape)."""
        saved = self.shards.params
        missing = [name for name in self.record.trainable if name not in saved]
        if missing:
            raise DamagedCheckpointError(
                self.path / ZERO_TAG, f"no shards of {len(missing)} trainable parameters (e.g. {missing[0]})"
            )
        for name in self.record.trainable:
            if list(saved[name].shape) != list(self.record.params.get(name, [])):
                raise DamagedCheckpointError(
                    self.path / ZERO_TAG,
                    f"{name} is {list(saved[name].shape)} in the shards, {self.record.params.get(name)} "
                    "in the trainer record",
                )
        trainable = set(self.record.trainable)
        return [name for name in self.record.params if name in trainable]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.record.params[name])

    def tensor(self, name: str, *, ema: bool = False) -> torch.Tensor:
        """Parameter ``name`` as a full fp32 tensor: the trained weights, or their EMA."""
        if not ema:
            return self.shards.tensor(name)
        numel = int(torch.Size(self.shape(name)).numel())
        pieces = []
        for rank, tree in enumerate(self._ema_trees):
            entry = tree["slices"].get(name)
            if entry is not None:
                found = piece(entry, f"rank {rank}'s EMA slice of {name}")
                if isinstance(found, str):
                    raise DamagedCheckpointError(self._rank_file(rank), found)
                pieces.append(found)
        parts = cover(pieces, 0, numel)  # before allocating: the stored slices must fill it exactly once
        if isinstance(parts, str):
            raise DamagedCheckpointError(self.path / RANK_STATES, f"the EMA slices of {name}: {parts}")
        full = torch.empty(numel, dtype=torch.float32)
        for part, low, high in parts:
            full[low:high] = part.value.read_flat(low - part.offset, high - low)
        return full.view(self.shape(name))

    def _rank_file(self, rank: int) -> Path:
        return self.path / RANK_STATES / rank_state_name(rank)

    @cached_property
    def _ema_trees(self) -> list[dict]:
        if not self.record.ema:
            raise CineSceneError(f"{self.path} holds no EMA weights (train.ema.enabled was off)")
        trees = []
        for rank in range(self.record.world_size):
            tree = RankStateFile(self._rank_file(rank)).tree
            ema = tree.get("callbacks", {}).get("ema") if isinstance(tree, dict) else None
            if not isinstance(ema, dict) or not isinstance(ema.get("slices"), dict):
                raise DamagedCheckpointError(self._rank_file(rank), "holds no EMA slices")
            trees.append(ema)
        return trees

    def items(self, *, ema: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names():
            yield name, self.tensor(name, ema=ema)


def consolidated_state_dict(path: Path | str, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The trainable weights of a run, checkpoints or step directory as full fp32 tensors (or their EMA)."""
    return dict(TrainedWeights(path).items(ema=ema))


def weights_digest(path: Path | str) -> str:
    """SHA-256 over the consolidated weights (names, shapes and bytes, in name order): equal = identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(consolidated_state_dict(path).items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
