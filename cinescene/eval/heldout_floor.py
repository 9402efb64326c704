"""The floor of a held-out set: its ground truth scored by the evaluation as if a model had generated it.

What a perfect model would score on exactly the clips, frames and settings an evaluation uses: the
held-out samples of ``eval.data`` chosen as `cinescene eval` chooses them, ``eval.metrics`` computed by the
same code, failures counted the same way. Two kinds:

* ``ground_truth``: the clip's frames at the generated frames' stride (every 4th for the pixel proxy), at
  full resolution;
* ``codec`` (pixel-proxy data with ``data.pixel_pool`` > 1): the same frames average-pooled and decoded as
  the model's output is (bilinear upsampling), i.e. the best this data lets a model generate. With
  ``pixel_pool: 1`` the two are the same video.

Each floor is written like an evaluation (``metrics.json``, ``table.md``, ``report.html``, ``samples/``,
the ground-truth videos), so the ablation's table and report read it as they read an arm. Used by
`cinescene bench ablation` (rows beside the arms) and `cinescene bench floor CONFIG` (alone: the SfM
registration rate of a data scale, docs/EVAL.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from cinescene import __version__
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("eval.floor")
KINDS = {"ground_truth": "ground truth", "codec": "ground truth through the pixel proxy"}


def floor_kinds(spec) -> list[str]:
    """The floors that differ for data of ``spec``: the codec's only where it loses detail."""
    lossy = spec.encoder_name == "none" and spec.pixel_pool > 1
    return ["ground_truth", "codec"] if lossy else ["ground_truth"]


def _floor_frames(sample, spec, kind: str, codec):
    if kind == "ground_truth":
        return sample.video[:: spec.frame_stride][: spec.generated_frames]
    import torch

    from cinescene.data.proxy import video_proxy

    return codec.decode(torch.from_numpy(video_proxy(sample.video, spec.pixel_pool)))


def evaluate_floor(cfg, out: Path, kind: str = "ground_truth") -> dict:
    """The ``kind`` floor (module doc) of ``cfg``'s held-out samples, written into ``out``; returns its
    metrics.json data."""
    from cinescene.sampling.codec import build_codec
    from cinescene.sampling.spec import training_spec

    from .evaluate import SampleResult, metric_inputs, prepare_dir, record_unreadable, write_sample
    from .heldout import choose
    from .metrics import MetricContext, compute_metrics
    from .report import write_report

    if kind not in KINDS:
        raise ValueError(f"unknown floor {kind!r}; expected one of {list(KINDS)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission
        raise CineSceneError(f"cannot write the floor into {out}: {exc.strerror or exc}") from None
    spec = training_spec(cfg)
    if kind == "codec" and spec.encoder_name != "none":
        raise ValueError("the codec floor needs pixel-proxy data (encoder none)")
    chosen = choose(cfg, spec)
    codec = build_codec(spec, cfg.model) if kind == "codec" else None
    context = MetricContext(cfg.eval)
    names = cfg.eval.metrics
    prepare_dir(out)
    started = time.perf_counter()
    for index in chosen.indices:
        begun = time.perf_counter()
        try:
            sample = chosen.samples.read(index)
        except CineSceneError as exc:  # a corrupt sample is reported, as `cinescene eval` does
            record_unreadable(out, chosen.samples.refs[index].key, exc)
            continue
        if sample.video is None:
            record_unreadable(
                out, sample.key, ValueError("the shards keep no pixels (data prepare --keep-pixels)")
            )
            continue
        frames = _floor_frames(sample, spec, kind, codec)
        inputs = metric_inputs(sample, frames, spec)
        result = SampleResult(sample.key, frames, inputs, compute_metrics(inputs, names, context))
        metadata = {"floor": kind}
        write_sample(out, sample, result, context, spec.video_fps(cfg.eval.fps), metadata, started=begun)
    header = {
        "cinescene": __version__,
        "checkpoint": f"none: the {KINDS[kind]} as the generated video",
        "step": 0,
        "weights": "no",
        "data": cfg.eval.data,
        "settings": {"steps": 0, "cfg": 0.0, "shift": 0.0, "seed": cfg.eval.seed, "floor": kind},
    }
    data = write_report(out, chosen.keys, names, header, dict(context.absent), KINDS[kind])
    _log.info(
        "floor (%s) of %d held-out samples in %.1f s: SfM registered %d of %d",
        KINDS[kind],
        len(data["samples"]),
        time.perf_counter() - started,
        data["sfm_attempts"] - data["sfm_failures"],
        data["sfm_attempts"],
    )
    return data


__all__ = ["KINDS", "evaluate_floor", "floor_kinds"]
