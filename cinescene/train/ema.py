"""Exponential moving average of the trainable weights, kept sharded like ZeRO keeps them.

Each rank averages only its own slice of every trainable parameter, in fp32:
under ZeRO-3 the slice is the parameter's partition (``param.ds_tensor``,
this rank's piece of the flattened tensor); under ZeRO-1/2, where every rank
holds whole parameters, the same arithmetic is applied to the flattened
``param.data`` so the EMA memory is still split across ranks. A slice is
described by (offset, length) into the flattened parameter, which is all it
takes to reassemble the full EMA (export, or loading at another world size).

Under ZeRO-3 with bf16, ``ds_tensor`` holds bf16 values (the fp32 master copy
lives inside the optimizer's flat buffers); the average itself is fp32.

:meth:`ShardedEMA.applied` puts the EMA in place of the weights for a while
(the eval hook samples with it) and puts the weights back bit-exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from cinescene.ckpt.slices import cover, piece
from cinescene.config.train import EMAConfig

from .callbacks import Callback, StepResult, TrainState


@dataclass
class _Slice:
    name: str
    param: nn.Parameter
    offset: int
    length: int
    shape: tuple[int, ...]

    def local(self) -> torch.Tensor:
        """This rank's slice of the current weights, 1-D (a view: no copy)."""
        if hasattr(self.param, "ds_tensor"):
            return self.param.ds_tensor.data.view(-1)[: self.length]
        return self.param.data.view(-1)[self.offset : self.offset + self.length]


def _slice_of(name: str, param: nn.Parameter, index: int, count: int) -> _Slice:
    if hasattr(param, "ds_tensor"):
        # ZeRO-3 partition: equal, padded pieces of the flattened tensor, one per rank of its group.
        part = int(param.ds_tensor.ds_numel)
        group_rank = dist.get_rank(group=param.ds_process_group)
        total = int(param.ds_numel)
        shape = tuple(param.ds_shape)
    else:
        total, shape = param.numel(), tuple(param.shape)
        part, group_rank = math.ceil(total / count), index
    offset = group_rank * part
    return _Slice(name, param, min(offset, total), max(0, min(part, total - offset)), shape)


def shadow_sizes(
    named_params: Iterable[tuple[str, nn.Parameter]], *, shard_index: int = 0, shard_count: int = 1
) -> list[int]:
    """The bytes of each fp32 shadow tensor a :class:`ShardedEMA` of these arguments would hold."""
    return [4 * _slice_of(n, p, shard_index, shard_count).length for n, p in named_params if p.requires_grad]


class ShardedEMA:
    def __init__(
        self,
        named_params: Iterable[tuple[str, nn.Parameter]],
        cfg: EMAConfig,
        *,
        shard_index: int = 0,
        shard_count: int = 1,
    ):
        self.decay = cfg.decay
        self.start_step = cfg.start_step
        self.shard_count = shard_count
        self.slices: list[_Slice] = [
            _slice_of(n, p, shard_index, shard_count) for n, p in named_params if p.requires_grad
        ]
        self.shadow: dict[str, torch.Tensor] = {
            s.name: s.local().detach().float().clone() for s in self.slices
        }

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step ``step``; copy them up to ``start_step``."""
        for s in self.slices:
            current = s.local().float()
            if step <= self.start_step:
                self.shadow[s.name].copy_(current)
            else:
                self.shadow[s.name].lerp_(current, 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "start_step": self.start_step,
            "slices": {
                s.name: {
                    "offset": s.offset,
                    "length": s.length,
                    "shape": list(s.shape),
                    "value": self.shadow[s.name].detach().cpu(),
                }
                for s in self.slices
            },
        }

    def load_state_dict(self, own: Mapping, all_ranks: Callable[[], list[Mapping]] | None = None) -> None:
        """Restore from a saved state; when its slicing differs from ours (another world size, or
        another rank's file), copy this rank's slice out of every rank's state (``all_ranks()``),
        reading only the overlapping ranges. Saved values are tensors or lazy stored tensors
        (:class:`cinescene.ckpt.rank_state.StoredTensor`)."""
        saved = own["slices"]
        if all(
            (s.name in saved and saved[s.name]["offset"] == s.offset and saved[s.name]["length"] == s.length)
            for s in self.slices
        ):
            for s in self.slices:
                found = piece(saved[s.name], f"the saved EMA slice of {s.name}")
                if isinstance(found, str):
                    raise ValueError(found)
                self.shadow[s.name].copy_(_read_range(found.value, 0, s.length))
            return
        if all_ranks is None:
            raise ValueError("the saved EMA is sliced differently and no other shards were provided")
        states = all_ranks()
        for s in self.slices:
            pieces = []
            for rank, state in enumerate(states):
                entry = state["slices"].get(s.name)
                if entry is not None:
                    found = piece(entry, f"rank {rank}'s EMA slice of {s.name}")
                    if isinstance(found, str):
                        raise ValueError(found)
                    pieces.append(found)
            parts = cover(pieces, s.offset, s.offset + s.length)
            if isinstance(parts, str):
                raise ValueError(f"the saved EMA of {s.name} (the elements this rank holds): {parts}")
            for part, low, high in parts:
                self.shadow[s.name][low - s.offset : high - s.offset].copy_(
                    _read_range(part.value, low - part.offset, high - low)
                )

    def full_numels(self) -> dict[str, int]:
        return {s.name: math.prod(s.shape) for s in self.slices}

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The EMA weights in place of the trained ones inside the block, the trained ones restored exactly.

        A collective: every rank enters together. Under ZeRO-3 each rank writes its slice into its own
        partition (``ds_tensor``); parameters ZeRO-3 keeps whole on every rank (``ds_persist``, below
        ``parallel.param_persistence_threshold``) are released and gathered again around the write, as
        DeepSpeed does when it loads a checkpoint. Under ZeRO-1/2, where every rank holds whole
        parameters, the ranks' slices are all-gathered into each parameter; the trained values wait in
        host memory meanwhile. The optimizer's master copy is never touched.
        """
        zero3 = [s for s in self.slices if hasattr(s.param, "ds_tensor")]
        whole = [s for s in self.slices if not hasattr(s.param, "ds_tensor")]
        saved_local = [s.local().clone() for s in zero3]
        saved_whole = [s.param.data.detach().cpu().clone() for s in whole]
        persistent = [s.param for s in zero3 if getattr(s.param, "ds_persist", False)]
        try:
            with torch.no_grad():
                self._write_partitions(zero3, [self.shadow[s.name] for s in zero3], persistent)
                for s in whole:
                    s.param.data.copy_(self._gathered(s).to(s.param.dtype))
            yield
        finally:
            with torch.no_grad():
                self._write_partitions(zero3, saved_local, persistent)
                for s, value in zip(whole, saved_whole):
                    s.param.data.copy_(value)

    @staticmethod
    def _write_partitions(
        slices: list[_Slice], values: list[torch.Tensor], persistent: list[nn.Parameter]
    ) -> None:
        if persistent:
            persistent[0].partition(persistent)  # drop the whole copies: the partitions are the truth
        for s, value in zip(slices, values):
            s.local().copy_(value.to(s.local().dtype))
        if persistent:
            persistent[0].all_gather(persistent)

    def _gathered(self, s: _Slice) -> torch.Tensor:
        """ZeRO-1/2: one parameter's full EMA, joined from every rank's slice (equal, padded pieces)."""
        total, world = math.prod(s.shape), self.shard_count
        if world == 1:
            return self.shadow[s.name].view(s.shape)
        part = math.ceil(total / world)
        mine = torch.zeros(part, dtype=torch.float32, device=s.param.device)
        mine[: s.length] = self.shadow[s.name].to(s.param.device)
        pieces = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(pieces, mine)
        return torch.cat(pieces)[:total].view(s.shape)


def _read_range(value, start: int, length: int) -> torch.Tensor:
    """Elements ``start .. start+length`` of a saved slice: a tensor or a lazy one (``read_flat``)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[start : start + length]
    return value.read_flat(start, length)


class EMACallback(Callback):
    """Updates the sharded EMA after every applied optimizer step; saved per rank."""

    name = "ema"

    def __init__(self, ema: ShardedEMA):
        self.ema = ema
        self._all_ranks: Callable[[], list[Mapping]] | None = None

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        if result.applied:
            self.ema.update(result.step)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def provide_all_ranks(self, loader: Callable[[], list[Mapping]]) -> None:
        """How to read every rank's saved EMA, for a resume that slices differently."""
        self._all_ranks = loader

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state, self._all_ranks)
