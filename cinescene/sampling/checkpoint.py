"""A checkpoint on the command line -> its config and an inference model.

CKPT may be a run directory (``<run>/checkpoints/latest`` is used), a
``checkpoints/`` directory, a step directory, or a directory written by
``cinescene ckpt export``. :func:`resolve_checkpoint` turns it into a
:class:`CheckpointSource`; :func:`load_inference_model` is the one place that
turns a source into a model: a step directory's ZeRO shards consolidated (or,
with ``ema``, the EMA assembled from every rank's slice) through
:mod:`cinescene.ckpt.weights`, or an export's safetensors through
:func:`cinescene.ckpt.export.load_exported_model`.

Frozen parameters are not in a step directory (the VGGT encoder): they come
from the config's pretrained weights, or, when the run had none, from the same
seeded initialisation the run used (``run.seed`` before the model is built).
An export holds every parameter.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("sampling")

STEP, EXPORT = "step", "export"


@dataclass(frozen=True)
class CheckpointSource:
    path: Path  # the step directory, or the export directory
    kind: str  # STEP or EXPORT
    step: int
    trainable: list[str] | None = None  # step directories: the parameters the run trained
    ema: bool | None = None  # exports: whether the weights are the EMA

    def describe(self) -> str:
        return f"{self.path} (step {self.step}{', exported' if self.kind == EXPORT else ''})"


def resolve_checkpoint(path: str | Path) -> CheckpointSource:
    """A run, ``checkpoints/``, step or export directory -> what to load; one-line errors otherwise."""
    from cinescene.ckpt.export import DESCRIPTION, read_description
    from cinescene.ckpt.layout import (
        CHECKPOINTS,
        LATEST,
        TRAINER_STATE,
        is_complete,
        resolve_step_dir,
        step_of,
    )
    from cinescene.ckpt.record import read_record

    given = Path(path)
    if not given.exists():
        raise CineSceneError(f"checkpoint not found: {given}")
    if (given / DESCRIPTION).is_file():
        description = read_description(given)
        return CheckpointSource(
            given, EXPORT, int(description.get("step", 0)), ema=bool(description.get("ema"))
        )
    if step_of(given) is not None and given.is_dir() and not is_complete(given):
        raise CineSceneError(f"{given} is not a complete checkpoint (no {TRAINER_STATE})")
    if (
        not any(p.exists() or p.is_symlink() for p in (given / LATEST, given / CHECKPOINTS / LATEST))
        and step_of(given) is None
    ):
        raise CineSceneError(
            f"{given} is not a run, checkpoints, step or export directory (no "
            f"{CHECKPOINTS}/{LATEST}, no step_XXXXXXXX directory, no {DESCRIPTION})"
        )
    step_dir = resolve_step_dir(given)
    record = read_record(step_dir)
    return CheckpointSource(step_dir, STEP, record.step, trainable=list(record.trainable))


def _masked_keys(node, prefix: str = "") -> list[str]:
    from cinescene.secrets import MASK

    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _masked_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == MASK else []


#: Keys older runs saved that the config no longer has, and the key that owns their value now.
RETIRED_KEYS = {("data", "val_shards"): ("eval", "data")}


def _retire_keys(raw: dict) -> bool:
    """Drop :data:`RETIRED_KEYS` from a saved config (moving a value to its owner when that is unset); True
    when anything changed. ``data.val_shards`` was the held-out data before ``eval.data`` owned it."""
    changed = False
    for (section, key), (owner, owner_key) in RETIRED_KEYS.items():
        if isinstance(raw.get(section), dict) and key in raw[section]:
            value = raw[section].pop(key)
            if (
                value is not None
                and isinstance(raw.setdefault(owner, {}), dict)
                and not raw[owner].get(owner_key)
            ):
                raw[owner][owner_key] = value
            changed = True
    return changed


def checkpoint_config(source: CheckpointSource, overrides: Sequence[str] = ()):
    """The run's config as the checkpoint (or export) saved it, with ``overrides`` (KEY=VALUE) applied.

    Runs saved before the secret scrubber spared numbers and flags hold ``***`` for
    some (``model.scene.vggt.num_register_tokens``, ``model.scene.vggt_tokens``);
    such a key must be given as an override, and the error says which. Keys the
    config no longer has (:data:`RETIRED_KEYS`) are dropped or moved to their owner.
    """
    import yaml

    from cinescene.ckpt.export import RUN_CONFIG
    from cinescene.ckpt.layout import CONFIG_FILE
    from cinescene.config import load_config
    from cinescene.config.loading import _field_type, read_yaml

    path = source.path / (RUN_CONFIG if source.kind == EXPORT else CONFIG_FILE)
    if not path.is_file():
        raise CineSceneError(f"{source.path} has no {path.name}")
    raw = read_yaml(path) or {}
    masked = [k for k in _masked_keys(raw) if "str" not in str(_field_type(k))]
    retired = _retire_keys(raw)
    if not masked and not retired:
        cfg, _ = load_config(path, list(overrides))
        return cfg
    given = {item.partition("=")[0] for item in overrides}
    lacking = [k for k in masked if k not in given]
    if lacking:
        raise CineSceneError(
            f"{path} has {', '.join(lacking)} masked as '***' (older runs scrubbed them as if "
            f"secret): give the run's values as overrides, e.g. {lacking[0]}=VALUE"
        )
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


def trained_state_dict(source: CheckpointSource, ema: bool = False) -> dict[str, torch.Tensor]:
    """A step directory's trainable weights by parameter name, as full fp32 tensors; with ``ema`` their EMA,
    assembled from every rank's slice."""
    from cinescene.ckpt.weights import consolidated_state_dict

    if source.kind != STEP:
        raise CineSceneError(f"{source.path} is an export: load it with load_inference_model")
    try:
        return consolidated_state_dict(source.path, ema=ema)
    except CineSceneError:  # damage the checkpoint readers found names its file already
        raise
    except Exception as exc:  # any other damage (foreign files) is one line naming the checkpoint
        detail = str(exc).splitlines()[0].split(". ")[0] if str(exc) else "no detail"
        raise CineSceneError(
            f"{source.path}: the ZeRO shards do not load ({type(exc).__name__}: {detail})"
        ) from None


def load_inference_model(
    source: CheckpointSource, cfg, *, ema: bool = False, device="cpu", dtype: torch.dtype | None = None
):
    """The model of ``cfg`` with the checkpoint's trained (or EMA) weights, in eval mode on ``device``."""
    if source.kind == EXPORT:
        return _load_export(source, cfg, ema=ema, device=device, dtype=dtype)
    from cinescene import rng
    from cinescene.models import build_model

    weights = trained_state_dict(source, ema)
    rng.seed_all(cfg.run.seed)  # frozen, unsaved parameters come out as the run built them
    model = build_model(cfg.model)
    trainable = set(source.trainable or [n for n, p in model.named_parameters() if p.requires_grad])
    names = {n for n, _ in model.named_parameters()}
    unknown = sorted(set(weights) - names)
    missing = sorted(trainable - set(weights))
    if unknown or missing:
        detail = "; ".join(
            part
            for part in (
                f"not in the model: {', '.join(unknown[:4])}" if unknown else "",
                f"missing: {', '.join(missing[:4])}" if missing else "",
            )
            if part
        )
        raise CineSceneError(f"{source.path} does not fit the model of its config.yaml ({detail})")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    reshaped = [n for n, t in weights.items() if tuple(t.shape) != tuple(shapes[n])]
    if reshaped:
        raise CineSceneError(
            f"{source.path}: {reshaped[0]} is {tuple(weights[reshaped[0]].shape)} in the "
            f"checkpoint, {tuple(shapes[reshaped[0]])} in the model"
        )
    model.load_state_dict(weights, strict=False)
    frozen = sorted(names - set(weights))
    if frozen and cfg.model.scene.enabled and not cfg.model.scene.vggt.weights:
        _log.info(
            "%d frozen parameters (the scene encoder) re-created from run.seed=%d as the run built them "
            "(model.scene.vggt.weights is unset)",
            len(frozen),
            cfg.run.seed,
        )
    _log.info("loaded %s weights of %s", "EMA" if ema else "trained", source.describe())
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _load_export(source: CheckpointSource, cfg, *, ema: bool, device, dtype: torch.dtype | None):
    """An export holds one set of weights: the EMA when it was exported with --ema, else the trained ones."""
    from cinescene.ckpt.export import load_exported_model

    if ema and not source.ema:
        raise CineSceneError(
            f"{source.path} holds the trained weights (exported without --ema); drop --ema or "
            "export the checkpoint again with --ema"
        )
    model = load_exported_model(source.path, model_cfg=cfg.model, device="cpu")
    _log.info("loaded %s weights of %s", "EMA" if source.ema else "trained", source.describe())
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
