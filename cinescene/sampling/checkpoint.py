"""A checkpoint on the command line -> its config and an inference model.

CKPT may be a run directory (``<run>/checkpoints/latest`` is used), a
``checkpoints/`` directory, or a step directory. :func:`resolve_checkpoint`
turns it into a :class:`CheckpointSource`; :func:`load_inference_model` is the
one place that turns a source into weights: the step directory's ZeRO shards
consolidated (``cinescene.train.checkpoint.consolidated_state_dict``) or, with
``ema``, the EMA assembled from every rank's slice. Exported model directories
(``cinescene ckpt export``) become another ``CheckpointSource.kind`` read here.

Frozen parameters are not in a checkpoint (the VGGT encoder): they come from
the config's pretrained weights, or, when the run had none, from the same
seeded initialisation the run used (``run.seed`` before the model is built).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("sampling")


@dataclass(frozen=True)
class CheckpointSource:
    path: Path                 # the step directory
    kind: str                  # "step": a training step directory
    step: int
    trainer_state: dict

    def describe(self) -> str:
        return f"{self.path} (step {self.step})"


def resolve_checkpoint(path: str | Path) -> CheckpointSource:
    """A run, ``checkpoints/`` or step directory -> the step directory to load; one-line errors otherwise."""
    from cinescene.train.checkpoint import LATEST, is_complete, read_trainer_state, step_of

    given = Path(path)
    if not given.exists():
        raise CineSceneError(f"checkpoint not found: {given}")
    candidate = given
    for pointer_dir in (given / "checkpoints", given):
        pointer = pointer_dir / LATEST
        if pointer.is_file():
            try:
                name = pointer.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise CineSceneError(f"{pointer} is unreadable ({exc})") from None
            candidate = pointer_dir / name
            break
    if not candidate.is_dir() or step_of(candidate) is None:
        raise CineSceneError(f"{given} is not a run, checkpoints or step directory (no checkpoints/latest, no "
                             "step_XXXXXXXX directory)")
    if not is_complete(candidate):
        raise CineSceneError(f"{candidate} is not a complete checkpoint (no trainer_state.json)")
    state = read_trainer_state(candidate)
    return CheckpointSource(candidate, "step", int(state.get("step", step_of(candidate))), state)


def _masked_keys(node, prefix: str = "") -> List[str]:
    from cinescene.train.tracking import MASK

    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _masked_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == MASK else []


#: Keys older runs saved that the config no longer has, and the key that owns their value now.
RETIRED_KEYS = {("data", "val_shards"): ("eval", "data")}


def _retire_keys(raw: dict) -> bool:
    """Drop :data:`RETIRED_KEYS` from a saved config (moving a value to its owner when that is unset); True when
    anything changed. ``data.val_shards`` was the held-out data before ``eval.data`` owned it."""
    changed = False
    for (section, key), (owner, owner_key) in RETIRED_KEYS.items():
        if isinstance(raw.get(section), dict) and key in raw[section]:
            value = raw[section].pop(key)
            if value is not None and isinstance(raw.setdefault(owner, {}), dict) and not raw[owner].get(owner_key):
                raw[owner][owner_key] = value
            changed = True
    return changed


def checkpoint_config(source: CheckpointSource, overrides: Sequence[str] = ()):
    """The run's config as the checkpoint saved it, with ``overrides`` (KEY=VALUE) applied and validated.

    Runs saved before the secret scrubber spared numbers and flags hold ``***`` for
    some (``model.scene.vggt.num_register_tokens``, ``model.scene.vggt_tokens``);
    such a key must be given as an override, and the error says which. Keys the
    config no longer has (:data:`RETIRED_KEYS`) are dropped or moved to their owner.
    """
    import yaml

    from cinescene.config import load_config
    from cinescene.config.loading import _field_type
    from cinescene.train.checkpoint import CONFIG_FILE

    path = source.path / CONFIG_FILE
    if not path.is_file():
        raise CineSceneError(f"{source.path} has no {CONFIG_FILE}")
    raw = yaml.safe_load(path.read_text()) or {}
    masked = [k for k in _masked_keys(raw) if "str" not in str(_field_type(k))]
    retired = _retire_keys(raw)
    if not masked and not retired:
        cfg, _ = load_config(path, list(overrides))
        return cfg
    given = {item.partition("=")[0] for item in overrides}
    lacking = [k for k in masked if k not in given]
    if lacking:
        raise CineSceneError(f"{path} has {', '.join(lacking)} masked as '***' (older runs scrubbed them as if "
                             f"secret): give the run's values as overrides, e.g. {lacking[0]}=VALUE")
    for key in masked:
        parent = raw
        *head, last = key.split(".")
        for part in head:
            parent = parent[part]
        del parent[last]
    with tempfile.TemporaryDirectory(prefix="cinescene-config-") as tmp:
        cleaned = Path(tmp) / CONFIG_FILE
        cleaned.write_text(yaml.safe_dump(raw))
        cfg, _ = load_config(cleaned, list(overrides))
    return cfg


def _rank_states(step_dir: Path):
    """Every rank's saved state, read with ``torch.load(weights_only=True)``.

    The only non-tensor objects the rank states hold are numpy's RNG state
    (an array and its dtype); they are allowed by name, nothing else is.
    """
    import numpy as np

    from cinescene.train.checkpoint import RANK_STATES

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    allowed = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    files = sorted((step_dir / RANK_STATES).glob("rank_*.pt"))
    if not files:
        raise CineSceneError(f"{step_dir} holds no rank states")
    states = []
    for file in files:
        try:
            with torch.serialization.safe_globals(allowed):
                states.append(torch.load(file, map_location="cpu", weights_only=True))
        except Exception as exc:  # a corrupt file or a pickle that needs more than plain data
            raise CineSceneError(f"{file} cannot be read as plain data: {str(exc).splitlines()[0]}") from None
    return states


def ema_state_dict(source: CheckpointSource) -> Dict[str, torch.Tensor]:
    """The EMA weights (full fp32 tensors) assembled from every rank's slice."""
    from cinescene.train.ema import assemble

    states = _rank_states(source.path)
    emas = [s.get("callbacks", {}).get("ema") for s in states]
    if any(e is None for e in emas):
        raise CineSceneError(f"{source.path} holds no EMA weights (the run had train.ema.enabled=false)")
    return assemble(emas)


def trained_state_dict(source: CheckpointSource, ema: bool = False) -> Dict[str, torch.Tensor]:
    """The seam between checkpoint formats and the model: trainable weights by parameter name."""
    if source.kind != "step":
        raise CineSceneError(f"{source.path}: checkpoints of kind {source.kind!r} cannot be loaded yet")
    if ema:
        return ema_state_dict(source)
    from cinescene.train.checkpoint import consolidated_state_dict

    try:
        return consolidated_state_dict(source.path)
    except Exception as exc:  # any damage (missing, truncated, foreign files) is the same one line for a user
        detail = str(exc).splitlines()[0].split(". ")[0] if str(exc) else "no detail"
        raise CineSceneError(f"{source.path}: the ZeRO shards do not load ({type(exc).__name__}: {detail})") \
            from None


def load_inference_model(source: CheckpointSource, cfg, *, ema: bool = False, device="cpu",
                         dtype: Optional[torch.dtype] = None):
    """The model of ``cfg`` with the checkpoint's trained (or EMA) weights, in eval mode on ``device``."""
    from cinescene.models import build_model
    from cinescene.train import rng

    weights = trained_state_dict(source, ema)
    rng.seed_all(cfg.run.seed)                 # frozen, unsaved parameters come out as the run built them
    model = build_model(cfg.model)
    trainable = set(source.trainer_state.get("trainable") or [n for n, p in model.named_parameters()
                                                                  if p.requires_grad])
    names = {n for n, _ in model.named_parameters()}
    unknown = sorted(set(weights) - names)
    missing = sorted(trainable - set(weights))
    if unknown or missing:
        detail = "; ".join(part for part in (f"not in the model: {', '.join(unknown[:4])}" if unknown else "",
                                             f"missing: {', '.join(missing[:4])}" if missing else "") if part)
        raise CineSceneError(f"{source.path} does not fit the model of its config.yaml ({detail})")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    reshaped = [n for n, t in weights.items() if tuple(t.shape) != tuple(shapes[n])]
    if reshaped:
        raise CineSceneError(f"{source.path}: {reshaped[0]} is {tuple(weights[reshaped[0]].shape)} in the "
                             f"checkpoint, {tuple(shapes[reshaped[0]])} in the model")
    model.load_state_dict(weights, strict=False)
    frozen = sorted(names - set(weights))
    if frozen and cfg.model.scene.enabled and not cfg.model.scene.vggt.weights:
        _log.info("%d frozen parameters (the scene encoder) re-created from run.seed=%d as the run built them "
                  "(model.scene.vggt.weights is unset)", len(frozen), cfg.run.seed)
    _log.info("loaded %s weights of %s", "EMA" if ema else "trained", source.describe())
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
