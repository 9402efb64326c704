"""One held-out sample in, its video and metrics out: what `cinescene eval` and the training hook share.

::

    generator = VideoGenerator(model, spec, codec, device)
    context = MetricContext(cfg.eval, device)
    result = evaluate_sample(generator, samples.read(i), settings, context, cfg.eval.metrics)
    result.frames, result.metrics.values, result.inputs (what the metrics compared)

:func:`evaluate_into` also writes the sample's files into an evaluation
directory (the layout of ``cinescene eval --out``, and of the hook's
``<run.dir>/eval/step_XXXXXXXX/``): ``samples/<key>.json`` (the record
``metrics.json`` collects: metrics, the requested cameras and what SfM
recovered), and with media ``videos/<key>.mp4``, ``side_by_side/<key>.mp4``
(generated | ground truth, labelled) and ``contact/<key>.png`` (its
contact-sheet block), and in the references folder (``out`` itself, or the
hook's ``<run.dir>/eval/``, shared by its steps) ``ground_truth/<key>.mp4``
and ``scene_images/<key>.png``. Each rank writes its own samples' files;
:func:`cinescene.eval.report.write_report` gathers them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cinescene.durable import write_json_atomic
from cinescene.sampling.inputs import ShardSample
from cinescene.sampling.pipeline import Settings, VideoGenerator
from cinescene.sampling.spec import DataSpec
from cinescene.sampling.video import write_mp4, write_strip
from cinescene.secrets import scrub

from . import report
from .metrics import MetricContext, MetricInputs, SampleMetrics, camera, compute_metrics, pixels

# Per-sample files a report gathers; emptied before each evaluation.
WORK_DIRS = ("samples", "contact", "side_by_side")
VIDEOS = "videos"
GROUND_TRUTH = "ground_truth"  # in the references folder
SCENE_IMAGES = "scene_images"  # in the references folder


@dataclass
class SampleResult:
    key: str
    frames: np.ndarray
    inputs: MetricInputs
    metrics: SampleMetrics


def metric_inputs(sample: ShardSample, frames: np.ndarray, spec: DataSpec) -> MetricInputs:
    """What the metrics compare: ground-truth frames at the generated frames' stride (every 4th for the
    pixel proxy), the scene images the model saw, the requested cameras and the first frame's intrinsics."""

    def aligned(video: np.ndarray | None) -> np.ndarray | None:
        return None if video is None else video[:: spec.frame_stride][: len(frames)]

    return MetricInputs(
        generated=frames,
        ground_truth=aligned(sample.video),
        background=aligned(sample.video_bg),
        scene_images=sample.scene,
        cameras=sample.cameras,
        intrinsics=sample.intrinsics[0],
        camera_stride=spec.camera_stride,
        prompt=sample.prompt,
    )


def evaluate_sample(
    generator: VideoGenerator,
    sample: ShardSample,
    settings: Settings,
    context: MetricContext,
    names: Sequence[str],
    callback: Callable | None = None,
) -> SampleResult:
    frames = generator.video(
        sample.text,
        sample.cameras,
        sample.scene,
        settings,
        key=sample.key,
        callback=callback,
        scene_cameras=sample.scene_cameras,
    )
    inputs = metric_inputs(sample, frames, generator.spec)
    return SampleResult(sample.key, frames, inputs, compute_metrics(inputs, names, context))


def prepare_dir(out: Path) -> None:
    """Empty the per-sample folders of ``out``: no earlier evaluation's records may leak into this one."""
    for name in WORK_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
    (out / VIDEOS).mkdir(exist_ok=True)


def evaluate_into(
    out: Path,
    generator: VideoGenerator,
    sample: ShardSample,
    settings: Settings,
    context: MetricContext,
    names: Sequence[str],
    *,
    fps: float,
    metadata: dict,
    media: bool = True,
    references: Path | None = None,
    callback: Callable | None = None,
) -> SampleResult:
    """:func:`evaluate_sample`, then :func:`write_sample`."""
    started = time.perf_counter()
    result = evaluate_sample(generator, sample, settings, context, names, callback=callback)
    media_dir = references or out
    write_sample(out, sample, result, context, fps, {**metadata, **vars(settings)}, media, media_dir, started)
    return result


def write_sample(
    out: Path,
    sample: ShardSample,
    result: SampleResult,
    context: MetricContext,
    fps: float,
    metadata: dict,
    media: bool = True,
    references: Path | None = None,
    started: float | None = None,
) -> dict:
    """The sample's files in ``out`` (module doc): its record, and with ``media`` its videos and images; the
    mp4s play at ``fps`` and hold ``metadata`` with the sample's key and prompt. ``references``: where the
    ground-truth video and the scene images go (default ``out``); ``started``: when the sample's work began
    (``perf_counter``), for the record's seconds. Returns the record."""
    inputs = result.inputs
    record = {
        "key": sample.key,
        "prompt": sample.prompt,
        "metrics": {k: report.json_number(v) for k, v in result.metrics.values.items()},
        "per_frame": {k: [report.json_number(v) for v in vs] for k, vs in result.metrics.per_frame.items()},
        "missing": result.metrics.missing,
    }
    if inputs.cameras is not None:
        compared = len(inputs.generated[:: inputs.camera_stride])
        record["cameras"] = camera.poses_to_json(camera.as_c2w(inputs.cameras)[:compared])
    if "sfm" in result.metrics.details:
        record["sfm"] = result.metrics.details["sfm"]
    if media:
        record.update(_write_media(out, references or out, sample, result, context, fps, metadata))
    if started is not None:
        record["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(out / "samples" / f"{sample.key}.json", scrub(record))
    return record


def _write_media(
    out: Path, references: Path, sample: ShardSample, result: SampleResult, context, fps, metadata: dict
) -> dict[str, str]:
    """The sample's videos and images (module doc); returns their paths relative to ``out`` for its record."""
    inputs, key = result.inputs, sample.key
    tags = {"key": key, "prompt": sample.prompt}
    metadata = scrub({**tags, **metadata})  # masked: a prompt or setting may carry a secret
    paths = {"video": f"{VIDEOS}/{key}.mp4"}
    write_mp4(out / paths["video"], result.frames, fps, metadata)
    error = None
    if inputs.ground_truth is not None:
        truth = references / GROUND_TRUTH / f"{key}.mp4"
        write_mp4(truth, inputs.ground_truth, fps, scrub({**tags, "ground_truth": True}))
        paths["ground_truth"] = os.path.relpath(truth, out)
        paths["side_by_side"] = f"side_by_side/{key}.mp4"
        pair = report.side_by_side({"generated": result.frames, "ground truth": inputs.ground_truth})
        write_mp4(out / paths["side_by_side"], pair, fps, metadata)
        if inputs.background is not None:
            bg = context.cfg.background
            error = report.background_error(
                result.frames,
                inputs.background,
                pixels.background_mask(inputs.ground_truth, inputs.background, bg.threshold, bg.dilate),
            )
    if inputs.scene_images is not None and len(inputs.scene_images):
        strip = references / SCENE_IMAGES / f"{key}.png"
        write_strip(strip, inputs.scene_images, limit=len(inputs.scene_images))
        paths["scene_images"] = os.path.relpath(strip, out)
    block = report.contact_row(
        key, {"ground truth": inputs.ground_truth, "generated": result.frames, "background error": error}
    )
    Image.fromarray(block).save(out / "contact" / f"{key}.png")
    return paths


def record_unreadable(out: Path, key: str, error: Exception) -> None:
    """A selected sample that cannot be read: reported in ``metrics.json``, left out of the means."""
    write_json_atomic(out / "samples" / f"{key}.json", {"key": key, "unreadable": str(error)})
