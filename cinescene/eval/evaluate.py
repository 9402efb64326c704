"""One held-out sample in, its video and metrics out: what `cinescene eval` and the training hook share.

::

    generator = VideoGenerator(model, spec, codec, device)
    context = MetricContext(cfg.eval, device)
    result = evaluate_sample(generator, samples.read(i), settings, context, cfg.eval.metrics)
    result.frames, result.metrics.values, result.inputs (what the metrics compared)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from cinescene.sampling.inputs import ShardSample
from cinescene.sampling.pipeline import Settings, VideoGenerator
from cinescene.sampling.spec import DataSpec

from .metrics import MetricContext, MetricInputs, SampleMetrics, compute_metrics


@dataclass
class SampleResult:
    key: str
    frames: np.ndarray
    inputs: MetricInputs
    metrics: SampleMetrics


def metric_inputs(sample: ShardSample, frames: np.ndarray, spec: DataSpec) -> MetricInputs:
    """What the metrics compare: ground-truth frames at the generated frames' stride (every 4th for the
    pixel proxy), the scene images the model saw, the requested cameras and the first frame's intrinsics."""
    def aligned(video: Optional[np.ndarray]) -> Optional[np.ndarray]:
        return None if video is None else video[:: spec.frame_stride][: len(frames)]

    return MetricInputs(generated=frames, ground_truth=aligned(sample.video), background=aligned(sample.video_bg),
                        scene_images=sample.scene, cameras=sample.cameras, intrinsics=sample.intrinsics[0],
                        camera_stride=spec.camera_stride, prompt=sample.prompt)


def evaluate_sample(generator: VideoGenerator, sample: ShardSample, settings: Settings, context: MetricContext,
                    names: Sequence[str], callback: Optional[Callable] = None) -> SampleResult:
    frames = generator.video(sample.text, sample.cameras, sample.scene, settings, key=sample.key,
                             callback=callback)
    inputs = metric_inputs(sample, frames, generator.spec)
    return SampleResult(sample.key, frames, inputs, compute_metrics(inputs, names, context))
