"""Reading pretrained checkpoints into the model, with a readable report when they do not fit.

Formats (``read_state_dict``): a single ``.safetensors``; a sharded
checkpoint given as its ``*.safetensors.index.json`` (``weight_map`` ->
shard files next to it); a directory holding either; or a pickled
``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)`` (a
``{"state_dict"|"model"|"module": {...}}`` wrapper is unwrapped). Prefixes
``model.diffusion_model.`` (ComfyUI) and ``module.`` (DDP) are stripped.

Layouts: Wan's original names or diffusers' (``fmt="auto"`` detects them;
see :mod:`.key_mapping`).

Strictness (``load_pretrained``): every base-DiT parameter must be present
with its shape, and every checkpoint key must name a model parameter. Keys
of CineScene's own modules (camera, scene encoder) are loaded when present
and otherwise keep their initialisation (a Wan checkpoint has none).
Problems raise one :class:`~cinescene.errors.CineSceneError` whose first line
is the summary and whose next lines group the offending keys
(``blocks.{0-29}.self_attn.q.weight``), truncated.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .key_mapping import detect_layout, diffusers_to_wan
from .zero import full_shape, gathered, is_partitioned

_log = get_logger("models.weights")
STRIP_PREFIXES = ("model.diffusion_model.", "module.")
WRAPPER_KEYS = ("state_dict", "model", "module")
MAX_GROUPS_SHOWN = 12


# ---------------------------------------------------------------------------- reading
def _load_pickle(path: Path) -> Dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with code, truncated files
        raise CineSceneError(f"cannot read {path} as a weights-only torch checkpoint: "
                             f"{str(exc).splitlines()[0]}") from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CineSceneError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CineSceneError(f"cannot read {path} as safetensors: {str(exc).splitlines()[0]}") from None


def _load_index(path: Path) -> Dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CineSceneError(f"{path} is not a sharded-checkpoint index (no weight_map): {exc}") from None
    state: Dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CineSceneError(f"shard {shard} listed in {path} is missing")
        state.update(_load_safetensors(shard_path) if shard.endswith(".safetensors") else _load_pickle(shard_path))
    return state


def _resolve(path: Path) -> Path:
    """A directory -> its index json or its single .safetensors."""
    if not path.is_dir():
        return path
    candidates = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.safetensors"))
    if len(candidates) != 1:
        raise CineSceneError(f"{path}: expected one *.safetensors.index.json or one *.safetensors, "
                             f"found {len(candidates)}")
    return candidates[0]


def read_state_dict(path) -> Tuple[Dict[str, torch.Tensor], Path]:
    """All tensors of a checkpoint (any supported format) with prefixes stripped, and the file read."""
    path = _resolve(Path(path))
    if not path.exists():
        raise CineSceneError(f"checkpoint not found: {path}")
    name = path.name
    if name.endswith(".json"):
        state = _load_index(path)
    elif name.endswith(".safetensors"):
        state = _load_safetensors(path)
    elif name.endswith((".pth", ".pt", ".bin", ".ckpt")):
        state = _load_pickle(path)
    else:
        raise CineSceneError(f"{path}: unknown checkpoint format (expected .safetensors, "
                             ".safetensors.index.json, .pth/.pt/.bin)")
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, path


# ----------------------------------------------------------------------- reporting
def group_keys(keys: Iterable[str]) -> List[str]:
    """Collapse numbered paths: blocks.0.x, blocks.1.x, ... -> ``blocks.{0-1}.x`` (sorted)."""
    groups: Dict[str, set] = defaultdict(set)
    for key in keys:
        numbers = re.findall(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", key)
        pattern = re.sub(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)", "{}", key)
        groups[pattern].add(tuple(int(n) for n in numbers))
    lines = []
    for pattern, indices in sorted(groups.items()):
        if "{}" not in pattern:
            lines.append(pattern)
            continue
        columns = list(zip(*sorted(indices)))
        lines.append(pattern.format(*(_ranges(sorted(set(c))) for c in columns)))
    return lines


def _ranges(values: List[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    spans, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return "{" + ",".join(spans) + "}"


@dataclass
class LoadReport:
    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)       # required model keys absent from the checkpoint
    unexpected: List[str] = field(default_factory=list)    # checkpoint keys the model lacks
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint, model shape
    fresh: List[str] = field(default_factory=list)         # optional keys absent: kept at initialisation

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mis-shaped", self.mismatched)):
            if items:
                parts.append(f"{len(items)} {label}")
        if self.fresh:
            parts.append(f"{len(self.fresh)} CineScene-module tensors absent (kept as initialised)")
        return ", ".join(parts)

    def details(self) -> str:
        lines = []
        for label, keys in (("missing from the checkpoint", self.missing),
                            ("not in the model", self.unexpected)):
            if keys:
                lines.append(f"  {label}:")
                lines += _truncated([f"    {g}" for g in group_keys(keys)])
        if self.mismatched:
            lines.append("  shape differs (checkpoint vs model):")
            by_shapes: Dict[Tuple[tuple, tuple], List[str]] = defaultdict(list)
            for key, got, want in self.mismatched:
                by_shapes[(got, want)].append(key)
            entries = [f"    {g}: {list(got)} vs {list(want)}"
                       for (got, want), keys in sorted(by_shapes.items(), key=lambda kv: kv[1][0])
                       for g in group_keys(keys)]
            lines += _truncated(entries)
        return "\n".join(lines)

    def error(self) -> CineSceneError:
        return CineSceneError(f"checkpoint {self.source} does not fit the model: {self.summary()}\n{self.details()}")


def _truncated(lines: List[str]) -> List[str]:
    if len(lines) <= MAX_GROUPS_SHOWN:
        return lines
    return lines[:MAX_GROUPS_SHOWN] + [f"    ... and {len(lines) - MAX_GROUPS_SHOWN} more"]


# ------------------------------------------------------------------------ loading
def assign_state_dict(module: nn.Module, state: Dict[str, torch.Tensor], *, strict: bool = True,
                      source: str = "state dict",
                      optional: Optional[Callable[[str], bool]] = None) -> LoadReport:
    """Copy ``state`` into ``module``'s parameters and persistent buffers, ZeRO-3 aware.

    ``optional(name)`` marks model keys that may be absent (kept at
    initialisation). With ``strict``, any missing/unexpected/mis-shaped key
    raises the report as a CineSceneError before anything is written.
    """
    report = LoadReport(source=source)
    targets = dict(module.named_parameters())
    targets.update({k: v for k, v in module.state_dict(keep_vars=True).items() if k not in targets})
    for key in sorted(targets):
        if key in state:
            want, got = full_shape(targets[key]), tuple(state[key].shape)
            if want != got:
                report.mismatched.append((key, got, want))
            else:
                report.loaded.append(key)
        elif optional is not None and optional(key):
            report.fresh.append(key)
        else:
            report.missing.append(key)
    report.unexpected = sorted(k for k in state if k not in targets)
    if strict and not report.ok:
        raise report.error()
    _copy_into(module, {k: state[k] for k in report.loaded})
    return report


@torch.no_grad()
def _copy_into(module: nn.Module, values: Dict[str, torch.Tensor]) -> None:
    """Write values module by module so ZeRO-3 gathers one module's parameters at a time."""
    def owned(prefix: str, named) -> Dict[str, torch.Tensor]:
        keys = {name: (f"{prefix}.{name}" if prefix else name) for name, _ in named}
        return {keys[name]: t for name, t in named if keys[name] in values}

    def write(targets: Dict[str, torch.Tensor]) -> None:
        for key, tensor in targets.items():
            tensor.data.copy_(values[key].to(device=tensor.device, dtype=tensor.dtype))

    for prefix, sub in module.named_modules():
        write(owned(prefix, list(sub.named_buffers(recurse=False))))  # buffers are replicated: every rank
        params = owned(prefix, list(sub.named_parameters(recurse=False)))
        if not params:
            continue
        partitioned = any(is_partitioned(p) for p in params.values())
        with gathered(params.values(), modifier_rank=0):
            # Under ZeRO-3 rank 0 writes and GatheredParameters re-partitions to all on exit.
            if not partitioned or torch.distributed.get_rank() == 0:
                write(params)


def is_cinescene_extension(key: str) -> bool:
    """Parameters CineScene adds to the Wan DiT (absent from Wan/diffusers checkpoints)."""
    return key.startswith("scene_encoder.") or bool(re.match(r"^blocks\.\d+\.(cam_encoder|projector)\.", key))


def load_pretrained(model: nn.Module, path, *, fmt: str = "auto", strict: bool = True) -> LoadReport:
    """Load a Wan-original or diffusers-layout DiT checkpoint (see module doc) into ``model``."""
    state, resolved = read_state_dict(path)
    layout = detect_layout(state) if fmt == "auto" else fmt
    if layout not in ("wan", "diffusers"):
        raise CineSceneError(f"unknown checkpoint layout {fmt!r}; expected auto, wan or diffusers")
    if layout == "diffusers":
        state = diffusers_to_wan(state)
    report = assign_state_dict(model, state, strict=strict, source=f"{resolved} ({layout} layout)",
                               optional=is_cinescene_extension)
    _log.info("pretrained %s: %s", resolved, report.summary())
    if not report.ok:
        _log.warning("pretrained weights loaded non-strictly:\n%s", report.details())
    return report
