"""Reading pretrained checkpoints into the model, lazily, with a readable report when they do not fit.

Formats (:func:`open_checkpoint`): a single ``.safetensors``; a sharded
checkpoint given as its index ``.json`` (``weight_map`` -> shard files next
to it, e.g. ``model.safetensors.index.json``); a directory holding either (a
diffusers repository root: its ``transformer/``), or else one pickle; a
Hugging Face repo id, resolved in the local cache (:mod:`cinescene.hub`);
or a pickled ``.pth``/``.pt``/``.bin``/``.ckpt`` read with
``torch.load(weights_only=True, mmap=True)`` (a ``{"state_dict"|"model"|
"module": {...}}`` wrapper is unwrapped). Prefixes ``model.diffusion_model.``
(ComfyUI) and ``module.`` (DDP) are stripped.

Layouts: Wan's original names or diffusers' (``fmt="auto"`` detects them;
see :mod:`.key_mapping`). Renaming touches key names only, never data.

Lazy, rank-aware reading. A checkpoint opens as a :class:`TensorSource`:
tensor names and shapes (the safetensors headers; for pickles, the
unpickled metadata of a memory-mapped load), with a tensor's data read
only when :meth:`TensorSource.read` is called for it. The fit report is
decided on names and shapes alone, so it is identical on every rank and a
checkpoint that does not fit is rejected before any data is read. Loading
then walks the model module by module and reads only that module's
tensors. Under ZeRO-3 only rank 0 reads them: it writes the gathered
parameters, which are re-partitioned to every rank, so the other ranks
read headers only. A 14B checkpoint (57 GB in fp32) therefore costs one
module's tensors of host memory on rank 0, not the whole file on each rank.

Strictness (``load_pretrained``): every base-DiT parameter must be present
with its shape, and every checkpoint key must name a model parameter. Keys
of CineScene's own modules (camera, scene encoder) are loaded when present
and otherwise keep their initialisation (a Wan checkpoint has none).
Problems raise one :class:`~cinescene.errors.CineSceneError` whose first line
is the summary and whose next lines group the offending keys
(``blocks.{0-29}.self_attn.q.weight``), truncated.
"""

from __future__ import annotations

import contextlib
import json
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open

from cinescene.errors import CineSceneError
from cinescene.hub import resolve_weights
from cinescene.log import get_logger

from .key_mapping import detect_layout, diffusers_to_wan_key
from .zero import full_shape, gathered, is_partitioned

_log = get_logger("models.weights")
STRIP_PREFIXES = ("model.diffusion_model.", "module.")
WRAPPER_KEYS = ("state_dict", "model", "module")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
MAX_GROUPS_SHOWN = 12
Shape = tuple[int, ...]


# ---------------------------------------------------------------------------- sources
class TensorSource:
    """Named tensors whose names and shapes are known up front and whose data is read on demand."""

    def __init__(self, shapes: dict[str, Shape], fetch: Callable[[str], torch.Tensor]):
        self.shapes = shapes
        self._fetch = fetch

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor]) -> TensorSource:
        """A source over tensors already at hand (a state dict)."""
        return cls({k: tuple(v.shape) for k, v in tensors.items()}, tensors.__getitem__)

    def keys(self) -> Iterable[str]:
        return self.shapes.keys()

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def read(self, key: str) -> torch.Tensor:
        """The data of tensor ``key`` (for a checkpoint: read from the file now)."""
        return self._fetch(key)

    def renamed(self, rename: Callable[[str], str]) -> TensorSource:
        """The same tensors under ``rename(key)``; no data is read."""
        original = {rename(k): k for k in self.shapes}
        if len(original) != len(self.shapes):
            raise CineSceneError("renaming the checkpoint's keys maps two tensors to one name")
        return TensorSource(
            {new: self.shapes[old] for new, old in original.items()}, lambda key: self._fetch(original[key])
        )

    def subset(self, keys: Iterable[str]) -> TensorSource:
        """Only ``keys`` (which must be present)."""
        return TensorSource({k: self.shapes[k] for k in keys}, self._fetch)


def _open_pickle(path: Path) -> TensorSource:
    # Zip-format pickles (torch.save since 1.6) are memory-mapped: unpickling reads only the
    # metadata, a tensor's pages are read when it is copied. Legacy pickles cannot be mapped.
    mmap = zipfile.is_zipfile(path)
    if not mmap:
        _log.warning("%s is a legacy (non-zip) torch pickle: it is read into memory whole", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # pickles with code, truncated files
        raise CineSceneError(
            f"cannot read {path} as a weights-only torch checkpoint: {str(exc).splitlines()[0]}"
        ) from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise CineSceneError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return TensorSource.of({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def _open_safetensors(path: Path, files: contextlib.ExitStack) -> TensorSource:
    try:
        handle = files.enter_context(safe_open(str(path), framework="pt", device="cpu"))
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as exc:
        raise CineSceneError(f"cannot read {path} as safetensors: {str(exc).splitlines()[0]}") from None
    return TensorSource(shapes, handle.get_tensor)


def _open_file(path: Path, files: contextlib.ExitStack) -> TensorSource:
    return _open_safetensors(path, files) if path.name.endswith(".safetensors") else _open_pickle(path)


def _open_index(path: Path, files: contextlib.ExitStack) -> TensorSource:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CineSceneError(f"{path} is not a sharded-checkpoint index (no weight_map): {exc}") from None
    shapes: dict[str, Shape] = {}
    shard_of: dict[str, TensorSource] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CineSceneError(f"shard {shard} listed in {path} is missing")
        part = _open_file(shard_path, files)
        shapes.update(part.shapes)
        shard_of.update(dict.fromkeys(part.shapes, part))
    return TensorSource(shapes, lambda key: shard_of[key]._fetch(key))


# A diffusers pipeline repository (Wan-AI/Wan2.1-T2V-1.3B-Diffusers) keeps the DiT in this subfolder.
DIFFUSERS_DIT_FOLDER = "transformer"


def _resolve(path: Path) -> Path:
    """A directory -> its index json, else its single .safetensors, else its single pickle (VGGT-1B's
    model.pt); a diffusers pipeline root -> the same in its ``transformer/``."""
    if not path.is_dir():
        return path
    candidates = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.safetensors"))
    if not candidates and (path / DIFFUSERS_DIT_FOLDER).is_dir():
        return _resolve(path / DIFFUSERS_DIT_FOLDER)
    if not candidates:
        candidates = sorted(p for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES) and p.is_file())
    if len(candidates) != 1:
        raise CineSceneError(
            f"{path}: expected one *.safetensors.index.json, one *.safetensors or one torch pickle "
            f"({'/'.join(PICKLE_SUFFIXES)}), found {len(candidates)}"
        )
    return candidates[0]


def _strip_prefixes(source: TensorSource) -> TensorSource:
    for prefix in STRIP_PREFIXES:
        if len(source) and all(k.startswith(prefix) for k in source.keys()):
            size = len(prefix)
            source = source.renamed(lambda k, n=size: k[n:])
    return source


@contextlib.contextmanager
def open_checkpoint(path, what: str = "checkpoint") -> Iterator[tuple[TensorSource, Path]]:
    """Open a checkpoint of any supported format: (its tensors, read on demand, prefixes stripped; the file).

    ``path`` may be a Hugging Face repo id in the local cache; ``what`` names the option in that
    error. Files stay open (memory-mapped) inside the ``with`` block; tensors read there stay valid
    after it.
    """
    path = _resolve(resolve_weights(path, what))
    if not path.exists():
        raise CineSceneError(f"checkpoint not found: {path}")
    name = path.name
    with contextlib.ExitStack() as files:
        if name.endswith(".json"):
            source = _open_index(path, files)
        elif name.endswith(".safetensors") or name.endswith(PICKLE_SUFFIXES):
            source = _open_file(path, files)
        else:
            raise CineSceneError(
                f"{path}: unknown checkpoint format (expected .safetensors, a sharded index "
                f".json such as model.safetensors.index.json, or a torch pickle "
                f"{'/'.join(PICKLE_SUFFIXES)})"
            )
        yield _strip_prefixes(source), path


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a checkpoint (any supported format) with prefixes stripped, and the file read.

    Reads everything: for loading into a model use :func:`load_pretrained`,
    which reads one module's tensors at a time.
    """
    with open_checkpoint(path) as (source, resolved):
        return {k: source.read(k) for k in source.keys()}, resolved


# ----------------------------------------------------------------------- reporting
def group_keys(keys: Iterable[str]) -> list[str]:
    """Collapse numbered paths: blocks.0.x, blocks.1.x, ... -> ``blocks.{0-1}.x`` (sorted)."""
    groups: dict[str, set] = defaultdict(set)
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


def _ranges(values: list[int]) -> str:
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
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # required model keys absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, checkpoint, model shape
    fresh: list[str] = field(default_factory=list)  # optional keys absent: kept at initialisation

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded"]
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.mismatched),
        ):
            if items:
                parts.append(f"{len(items)} {label}")
        if self.fresh:
            parts.append(f"{len(self.fresh)} CineScene-module tensors absent (kept as initialised)")
        return ", ".join(parts)

    def details(self) -> str:
        lines = []
        for label, keys in (
            ("missing from the checkpoint", self.missing),
            ("not in the model", self.unexpected),
        ):
            if keys:
                lines.append(f"  {label}:")
                lines += _truncated([f"    {g}" for g in group_keys(keys)])
        if self.mismatched:
            lines.append("  shape differs (checkpoint vs model):")
            by_shapes: dict[tuple[tuple, tuple], list[str]] = defaultdict(list)
            for key, got, want in self.mismatched:
                by_shapes[(got, want)].append(key)
            entries = [
                f"    {g}: {list(got)} vs {list(want)}"
                for (got, want), keys in sorted(by_shapes.items(), key=lambda kv: kv[1][0])
                for g in group_keys(keys)
            ]
            lines += _truncated(entries)
        return "\n".join(lines)

    def error(self) -> CineSceneError:
        return CineSceneError(
            f"checkpoint {self.source} does not fit the model: {self.summary()}\n{self.details()}"
        )


def _truncated(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_GROUPS_SHOWN:
        return lines
    return lines[:MAX_GROUPS_SHOWN] + [f"    ... and {len(lines) - MAX_GROUPS_SHOWN} more"]


# ------------------------------------------------------------------------ loading
def assign_state_dict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor] | TensorSource,
    *,
    strict: bool = True,
    source: str = "state dict",
    optional: Callable[[str], bool] | None = None,
    check_only: bool = False,
) -> LoadReport:
    """Copy ``state`` (a state dict or a lazy :class:`TensorSource`) into ``module``, ZeRO-3 aware.

    Covers parameters and persistent buffers. ``optional(name)`` marks model
    keys that may be absent (kept at initialisation). The report needs only
    names and shapes; with ``strict``, any missing/unexpected/mis-shaped key
    raises it as a CineSceneError before any tensor is read or written.
    ``check_only``: return the report and copy nothing (no tensor data is
    read; ``module`` may live on the meta device).
    """
    tensors = state if isinstance(state, TensorSource) else TensorSource.of(state)
    report = LoadReport(source=source)
    targets = dict(module.named_parameters())
    targets.update({k: v for k, v in module.state_dict(keep_vars=True).items() if k not in targets})
    for key in sorted(targets):
        if key in tensors:
            want, got = full_shape(targets[key]), tensors.shapes[key]
            if want != got:
                report.mismatched.append((key, got, want))
            else:
                report.loaded.append(key)
        elif optional is not None and optional(key):
            report.fresh.append(key)
        else:
            report.missing.append(key)
    report.unexpected = sorted(k for k in tensors.keys() if k not in targets)
    if strict and not report.ok:
        raise report.error()
    if not check_only:
        _copy_into(module, tensors, set(report.loaded))
    return report


@torch.no_grad()
def _copy_into(module: nn.Module, tensors: TensorSource, keys: set[str]) -> None:
    """Read and write module by module: one module's tensors in memory, one module gathered under ZeRO-3."""

    def owned(prefix: str, named) -> dict[str, torch.Tensor]:
        full = {name: (f"{prefix}.{name}" if prefix else name) for name, _ in named}
        return {full[name]: t for name, t in named if full[name] in keys}

    def write(targets: dict[str, torch.Tensor]) -> None:
        for key, tensor in targets.items():
            tensor.data.copy_(tensors.read(key).to(device=tensor.device, dtype=tensor.dtype))

    for prefix, sub in module.named_modules():
        write(owned(prefix, list(sub.named_buffers(recurse=False))))  # buffers are replicated: every rank
        params = owned(prefix, list(sub.named_parameters(recurse=False)))
        if not params:
            continue
        partitioned = any(is_partitioned(p) for p in params.values())
        with gathered(params.values(), modifier_rank=0):
            # Under ZeRO-3 only rank 0 reads and writes; GatheredParameters re-partitions to all on exit.
            if not partitioned or torch.distributed.get_rank() == 0:
                write(params)


def is_cinescene_extension(key: str) -> bool:
    """Parameters CineScene adds to the Wan DiT (absent from Wan/diffusers checkpoints)."""
    return key.startswith("scene_encoder.") or bool(re.match(r"^blocks\.\d+\.(cam_encoder|projector)\.", key))


def load_pretrained(
    model: nn.Module, path, *, fmt: str = "auto", strict: bool = True, check_only: bool = False
) -> LoadReport:
    """Load a Wan-original or diffusers-layout DiT checkpoint (see module doc) into ``model``, lazily.

    ``check_only``: decide the fit from the checkpoint's names and shapes and
    load nothing (``cinescene train --dry-run``; ``model`` may be on meta).
    """
    if fmt not in ("auto", "wan", "diffusers"):
        raise CineSceneError(f"unknown checkpoint layout {fmt!r}; expected auto, wan or diffusers")
    with open_checkpoint(path, "model.pretrained") as (tensors, resolved):
        layout = detect_layout(tensors.keys()) if fmt == "auto" else fmt
        if layout == "diffusers":
            tensors = tensors.renamed(diffusers_to_wan_key)
        report = assign_state_dict(
            model,
            tensors,
            strict=strict,
            source=f"{resolved} ({layout} layout)",
            optional=is_cinescene_extension,
            check_only=check_only,
        )
    if check_only:
        return report
    _log.info("pretrained %s: %s", resolved, report.summary())
    if not report.ok:
        _log.warning("pretrained weights loaded non-strictly:\n%s", report.details())
    return report
