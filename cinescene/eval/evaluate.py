"""One held-out sample in, its video and metrics out: what `cinescene eval` and the training hook share.

::

    generator = VideoGenerator(model, spec, codec, device)
    context = MetricContext(cfg.eval, device)
    result = evaluate_sample(generator, samples.read(i), settings, context, cfg.eval.metrics)
    result.frames, result.metrics.values, result.inputs (what the metrics compared)

:func:`evaluate_into` also writes the sample's files into an evaluation
directory (the layout of ``cinescene eval --out``, and of the hook's
``<run.dir>/eval/step_XXXXXXXX/``): ``samples/<key>.json`` (the record
``metrics.json`` collects), and with media ``videos/<key>.mp4`` and
``contact/<key>.png`` (its contact-sheet block). Each rank writes its own
samples' files; :func:`cinescene.eval.report.write_report` gathers them.
"""

from __future__ import annotations

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
from cinescene.sampling.video import write_mp4
from cinescene.secrets import scrub

from . import report
from .metrics import MetricContext, MetricInputs, SampleMetrics, compute_metrics, pixels

WORK_DIRS = ("samples", "contact")  # per-sample files a report gathers; emptied before each evaluation
VIDEOS = "videos"


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
    """Empty the per-sample folders of ``out`` (a previous
    evaluation's records must not leak into this one)."""
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
    callback: Callable | None = None,
) -> SampleResult:
    """:func:`evaluate_sample`, then the sample's files in ``out`` (module doc); the mp4 plays at ``fps`` and
    holds ``metadata`` with the sample's key, prompt and the settings."""
    started = time.perf_counter()
    result = evaluate_sample(generator, sample, settings, context, names, callback=callback)
    record = {
        "key": sample.key,
        "prompt": sample.prompt,
        "metrics": {k: report.json_number(v) for k, v in result.metrics.values.items()},
        "per_frame": {k: [report.json_number(v) for v in vs] for k, vs in result.metrics.per_frame.items()},
        "missing": result.metrics.missing,
    }
    if "sfm" in result.metrics.details:
        record["sfm"] = result.metrics.details["sfm"]
    if media:
        video = f"{VIDEOS}/{sample.key}.mp4"
        write_mp4(
            out / video,
            result.frames,
            fps,
            scrub({"key": sample.key, "prompt": sample.prompt, **metadata, **vars(settings)}),
        )
        record["video"] = video
        inputs, error = result.inputs, None
        if inputs.ground_truth is not None and inputs.background is not None:
            bg = context.cfg.background
            error = report.background_error(
                result.frames,
                inputs.background,
                pixels.background_mask(inputs.ground_truth, inputs.background, bg.threshold, bg.dilate),
            )
        block = report.contact_row(
            sample.key,
            {"ground truth": inputs.ground_truth, "generated": result.frames, "background error": error},
        )
        Image.fromarray(block).save(out / "contact" / f"{sample.key}.png")
    record["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(out / "samples" / f"{sample.key}.json", scrub(record))
    return result


def record_unreadable(out: Path, key: str, error: Exception) -> None:
    """A selected sample that cannot be read: reported in ``metrics.json``, left out of the means."""
    write_json_atomic(out / "samples" / f"{key}.json", {"key": key, "unreadable": str(error)})
