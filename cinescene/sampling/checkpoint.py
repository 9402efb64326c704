"""A checkpoint -> an inference model.

CKPT (a run, ``checkpoints/``, step or export directory) becomes a
:class:`~cinescene.ckpt.CheckpointSource` by :func:`cinescene.ckpt.resolve_checkpoint`,
its config comes from :func:`cinescene.ckpt.checkpoint_config`; :func:`load_inference_model`
is the one place that turns a source into a model: a step directory's ZeRO shards consolidated (or,
with ``ema``, the EMA assembled from every rank's slice) through
:mod:`cinescene.ckpt.weights`, or an export's safetensors through
:func:`cinescene.ckpt.export.load_exported_model`.

Frozen parameters are not in a step directory (the VGGT encoder): they come
from the config's pretrained weights, or, when the run had none, from the same
seeded initialisation the run used (``run.seed`` before the model is built).
An export holds every parameter.
"""

from __future__ import annotations

import torch

from cinescene.ckpt.locate import EXPORT, STEP, CheckpointSource
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("sampling")


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
    _check_fits(source, build_model(cfg.model, device="meta"), weights)  # before allocating anything
    rng.seed_all(cfg.run.seed)  # frozen, unsaved parameters come out as the run built them
    model = build_model(cfg.model)
    names = {n for n, _ in model.named_parameters()}
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


def _check_fits(source: CheckpointSource, model, weights: dict[str, torch.Tensor]) -> None:
    """The weights fit ``model`` (built on the meta device): every trained parameter there, shapes equal."""
    trainable = set(source.trainable or [n for n, p in model.named_parameters() if p.requires_grad])
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    unknown = sorted(set(weights) - set(shapes))
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
    reshaped = [n for n, t in weights.items() if tuple(t.shape) != shapes[n]]
    if reshaped:
        raise CineSceneError(
            f"{source.path}: {reshaped[0]} is {tuple(weights[reshaped[0]].shape)} in the "
            f"checkpoint, {shapes[reshaped[0]]} in the model"
        )


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
