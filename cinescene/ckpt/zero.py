"""The ZeRO shards of a step directory (``zero/``), read lazily and independently of the saving world size.

DeepSpeed's layout, as its ``zero_to_fp32`` reconstructs it:

* ZeRO-3: ``param_shapes`` lists the parameters of each optimizer sub-group
  in order. Every parameter is cut into ``ceil(numel / W)`` elements per rank
  (the last piece zero-padded); a rank's flat tensor for sub-group ``i``
  (``fp32_flat_groups[i]``, and the Adam moments of optimizer state ``i``)
  is the concatenation of its pieces of that sub-group's parameters.
* ZeRO-1/2: a parameter group's parameters (with their alignment paddings)
  form one flat vector, split into ``W`` equal partitions
  (``single_partition_of_fp32_groups[g]``; the last rank's fp32 partition
  is stored without its tail padding).

:meth:`ZeroShards.read` turns (parameter, key, element range) into reads of
the ranks' pieces, so memory holds the requested range, never a rank file or
the model. All files are read through :class:`~.torchfile.TorchFile`: no
pickle runs code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DamagedCheckpointError
from .torchfile import LazyTensor, Placeholder, TorchFile

KEYS = ("fp32", "exp_avg", "exp_avg_sq")
_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_(model|optim)_states\.pt$")


@dataclass(frozen=True)
class _Param:
    name: str
    shape: tuple[int, ...]
    group: int  # sub-group (ZeRO-3) or parameter group (ZeRO-1/2) index in param_shapes
    offset: int  # ZeRO-3: offset of its piece in a rank's flat group; ZeRO-1/2: offset in the group vector
    part: int  # ZeRO-3: elements per rank; ZeRO-1/2: the group's partition size

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _natural_rank(path: Path) -> int:
    match = _RANK.search(path.name)
    return int(match.group(1)) if match else -1


class ZeroShards:
    """World-size independent view of ``<step>/zero/``: parameter names, shapes, fp32 values, Adam moments."""

    def __init__(self, zero_dir: Path | str):
        self.dir = Path(zero_dir)
        if not self.dir.is_dir():
            raise DamagedCheckpointError(self.dir, "missing: the checkpoint holds no ZeRO shards")
        optim = sorted(self.dir.glob("*optim_states.pt"), key=_natural_rank)
        models = sorted(self.dir.glob("*model_states.pt"), key=_natural_rank)
        if not models:
            raise DamagedCheckpointError(self.dir / "zero_pp_rank_0_mp_rank_00_model_states.pt", "missing")
        self.model_files = models
        self.model = TorchFile(models[0]).obj
        if not isinstance(self.model, dict) or "param_shapes" not in self.model:
            raise DamagedCheckpointError(models[0], "not a DeepSpeed model-states file (no param_shapes)")
        self.world_size = self.model.get("dp_world_size")
        if not (isinstance(self.world_size, int) and 1 <= self.world_size <= 1 << 20):
            raise DamagedCheckpointError(
                models[0], f"dp_world_size is {self.world_size!r:.20}, not a rank count"
            )
        expected = [self._optim_name(optim, r) for r in range(self.world_size)]
        for path in expected:
            if not path.is_file():
                raise DamagedCheckpointError(
                    path, f"missing (the shards were saved by {self.world_size} ranks)"
                )
        self.optim_files = expected
        self._optim: dict[int, dict] = {}
        first = self.optim_state(0)
        stage = first.get("zero_stage")  # DeepSpeed pickles its ZeroStageEnum (kept as an inert placeholder)
        if isinstance(stage, Placeholder) and stage.args:
            stage = stage.args[0]
        self.stage = (
            stage
            if isinstance(stage, int)
            else int(self.model.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0))
        )
        if self.stage not in (1, 2, 3):
            raise DamagedCheckpointError(self.optim_files[0], f"unknown ZeRO stage {stage!r}")
        self.params: dict[str, _Param] = self._index()

    # -------------------------------------------------------------------- layout
    def _optim_name(self, found: list[Path], rank: int) -> Path:
        for path in found:
            if _natural_rank(path) == rank:
                return path
        return self.dir / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"

    def optim_state(self, rank: int) -> dict:
        """Rank ``rank``'s optimizer state (structure parsed, tensors lazy)."""
        if rank not in self._optim:
            obj = TorchFile(self.optim_files[rank]).obj
            state = obj.get("optimizer_state_dict") if isinstance(obj, dict) else None
            if not isinstance(state, dict):
                raise DamagedCheckpointError(self.optim_files[rank], "not a DeepSpeed optimizer-states file")
            self._optim[rank] = state
        return self._optim[rank]

    def _index(self) -> dict[str, _Param]:
        try:
            return self._layout()
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise DamagedCheckpointError(
                self.model_files[0], "its param_shapes do not describe a ZeRO layout (altered?)"
            ) from None

    def _layout(self) -> dict[str, _Param]:
        shapes = self.model["param_shapes"]
        for names in shapes:
            for name, shape in names.items():
                if not (isinstance(name, str) and all(isinstance(d, int) and d >= 0 for d in shape)):
                    raise ValueError(name)
        params: dict[str, _Param] = {}
        if self.stage == 3:
            for group, names in enumerate(shapes):
                offset = 0
                for name, shape in names.items():
                    part = math.ceil(math.prod(shape) / self.world_size)
                    params[name] = _Param(name, tuple(shape), group, offset, part)
                    offset += part
            return params
        first = self.optim_state(0)
        paddings = first.get("param_alignment_paddings")
        for group, names in enumerate(shapes):
            part = first["single_partition_of_fp32_groups"][group].numel() if self.world_size > 1 else 0
            if self.world_size > 1 and part <= 0:
                raise ValueError(group)
            offset = 0
            for index, (name, shape) in enumerate(names.items()):
                params[name] = _Param(name, tuple(shape), group, offset, part)
                offset += math.prod(shape) + (paddings[group][index] if paddings else 0)
        return params

    def _piece(self, rank: int, group: int, key: str) -> LazyTensor:
        state = self.optim_state(rank)
        try:
            if self.stage == 3:
                if key == "fp32":
                    found = state["fp32_flat_groups"][group]
                else:
                    found = state["optimizer_state_dict"]["state"][group][key]
            elif key == "fp32":
                found = state["single_partition_of_fp32_groups"][group]
            else:
                found = state["base_optimizer_state"]["state"][group][key]
        except (KeyError, IndexError, TypeError):
            raise DamagedCheckpointError(self.optim_files[rank], f"no {key} for group {group}") from None
        if not isinstance(found, LazyTensor):
            raise DamagedCheckpointError(self.optim_files[rank], f"{key} of group {group} is not a tensor")
        return found

    def _runs(self, param: _Param, start: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """(rank, offset in that rank's flat group, count, offset in the requested range)."""
        if self.stage == 3:
            pos = start
            while pos < start + length:
                rank, within = divmod(pos, param.part)
                count = min(param.part - within, start + length - pos)
                yield rank, param.offset + within, count, pos - start
                pos += count
            return
        if self.world_size == 1:
            yield 0, param.offset + start, length, 0
            return
        pos = param.offset + start
        end = param.offset + start + length
        while pos < end:
            rank, within = divmod(pos, param.part)
            count = min(param.part - within, end - pos)
            yield rank, within, count, pos - param.offset - start
            pos += count

    # ------------------------------------------------------------------ reading
    def read(self, name: str, key: str = "fp32", start: int = 0, length: int | None = None) -> torch.Tensor:
        """Elements ``start .. start+length`` of parameter ``name``'s flattened ``key`` (fp32, Adam moments);
        every piece is checked against what its rank file stores before anything is allocated."""
        param = self.params[name]
        length = param.numel - start if length is None else length
        if start < 0 or length < 0 or start + length > param.numel:
            raise ValueError(f"range {start}+{length} outside {name} ({param.numel} elements)")
        runs = list(self._runs(param, start, length))
        pieces = [self._piece(rank, param.group, key) for rank, *_ in runs]
        for piece, (rank, local, count, _dst) in zip(pieces, runs):
            if local + count > piece.numel():  # checked before allocating: declared shapes may lie
                raise DamagedCheckpointError(
                    self.optim_files[rank],
                    f"{key} of group {param.group} holds {piece.numel()} elements, fewer than the layout of "
                    f"its parameters needs ({name} ends at element {local + count})",
                )
        out = torch.empty(length, dtype=torch.float32)
        for piece, (_rank, local, count, dst) in zip(pieces, runs):
            out[dst : dst + count] = piece.read_flat(local, count).float()
        return out

    def tensor(self, name: str, key: str = "fp32") -> torch.Tensor:
        """The whole parameter ``name`` (its shape, fp32)."""
        return self.read(name, key).view(self.params[name].shape)

    def step(self, name: str) -> torch.Tensor:
        """Adam's step counter of the optimizer group that holds ``name`` (as saved: a scalar tensor)."""
        group = self.params[name].group
        state = self.optim_state(0)
        groups = (state["optimizer_state_dict"] if self.stage == 3 else state["base_optimizer_state"])[
            "state"
        ]
        step = groups.get(group, {}).get("step") if isinstance(groups, dict) else None
        if step is None:
            raise DamagedCheckpointError(self.optim_files[0], f"no step counter for group {group}")
        return step.read() if isinstance(step, LazyTensor) else torch.tensor(float(step))

    def buffers(self) -> dict[str, torch.Tensor]:
        module = self.model.get("module") or {}
        return {name: module[name].read() for name in self.model.get("buffer_names", []) if name in module}

    def counters(self) -> dict[str, int]:
        """DeepSpeed engine counters saved with the shards."""
        return {
            key: int(self.model.get(key) or 0) for key in ("global_steps", "global_samples", "skipped_steps")
        }

    def files(self) -> list[Path]:
        return list(self.model_files) + list(self.optim_files)

    def check_all(self) -> None:
        """Parse every shard file's structure (no tensor data): raises if one is damaged or unsafe."""
        for path in self.model_files[1:]:
            TorchFile(path).close()
        for rank in range(self.world_size):
            self.optim_state(rank)
