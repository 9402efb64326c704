"""The metric registry: one entry per metric name, each computing one number per sample.

Usage (the eval CLI and the training hook alike)::

    context = MetricContext(cfg.eval, device)          # loads CLIP once, if configured
    result = compute_metrics(MetricInputs(generated=..., ground_truth=..., ...), cfg.eval.metrics, context)
    result.values      # {"psnr": 14.2, "rot_err": None, ...}: None = absent or failed
    result.details     # {"sfm": {"frames": 5, "registered": 3, "failure": "..."}}
    context.absent     # {"clip_v": "eval.clip.weights is not set ..."}: metrics that cannot run at all

A metric whose inputs a sample lacks (no ground truth without the subject,
no requested trajectory) is None for that sample, with the reason in
``result.missing``. Camera metrics share one SfM run per sample; a failed
reconstruction gives None for all three and ``details["sfm"]["failure"]``.
Per-frame values are averaged into the sample's value; a PSNR of ``inf`` in
any frame makes the mean ``inf``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cinescene.config.eval import METRIC_NAMES, EvalConfig

from . import camera, clip, matching, pixels, sfm


@dataclass
class MetricInputs:
    """One sample. Videos are uint8 (F, H, W, 3) with the generated video's frame count and size."""

    generated: np.ndarray
    ground_truth: np.ndarray | None = None
    background: np.ndarray | None = None  # the ground truth without the subject
    scene_images: np.ndarray | None = None  # (S, Hs, Ws, 3) uint8, the images the model was given
    cameras: np.ndarray | None = None  # (T, 4, 4) requested camera-to-world, one per camera frame
    intrinsics: np.ndarray | None = None  # (3, 3) pixel intrinsics of the generated frames
    camera_stride: int = 1  # camera frame j is generated frame j * camera_stride
    prompt: str | None = None


class MetricContext:
    """What every sample of one evaluation shares: settings, the CLIP model, the matcher."""

    def __init__(self, cfg: EvalConfig, device="cpu"):
        self.cfg = cfg
        self.device = device
        self.absent: dict[str, str] = {}
        self._clip = None
        self._matcher = None
        if any(name in REGISTRY and REGISTRY[name].group == "clip" for name in cfg.metrics):
            try:
                self._clip = clip.load_clip(cfg.clip, device)
            except clip.ClipUnavailable as exc:
                for name in cfg.metrics:
                    if REGISTRY[name].group == "clip":
                        self.absent[name] = str(exc)

    @property
    def clip(self) -> clip.ClipScorer:
        return self._clip

    @property
    def matcher(self) -> matching.Matcher:
        if self._matcher is None:
            self._matcher = matching.build_matcher(self.cfg.mat_pix)
        return self._matcher


@dataclass
class SampleMetrics:
    values: dict[str, float | None] = field(default_factory=dict)
    per_frame: dict[str, list[float]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # name -> why this sample has no value
    details: dict[str, dict] = field(default_factory=dict)


class _SampleWork:
    """Per-sample intermediate results that several metrics share (background mask, SfM)."""

    def __init__(self, inputs: MetricInputs, context: MetricContext):
        self.inputs, self.context = inputs, context
        self._mask = None
        self._camera: dict | None = None

    def background_mask(self) -> np.ndarray:
        if self._mask is None:
            bg = self.context.cfg.background
            self._mask = pixels.background_mask(
                self.inputs.ground_truth, self.inputs.background, bg.threshold, bg.dilate
            )
        return self._mask

    def camera(self) -> dict:
        """{"errors": {...} or None, "sfm": details} from ``trials`` SfM runs on the camera frames."""
        if self._camera is None:
            x = self.inputs
            frames = x.generated[:: x.camera_stride][: len(x.cameras)]
            requested = camera.as_c2w(x.cameras)[: len(frames)]
            results = sfm.estimate_poses(frames, x.intrinsics, self.context.cfg.sfm)
            errors = [
                camera.camera_errors(requested[r.registered], r.c2w[r.registered]) for r in results if r.ok
            ]
            best = max(results, key=lambda r: (r.ok, r.num_registered))
            details = {
                "frames": len(frames),
                "registered": best.num_registered,
                "failure": None if errors else best.failure,
                "trials": [{"registered": r.num_registered, "failure": r.failure} for r in results],
            }
            mean = {k: float(np.mean([e[k] for e in errors])) for k in errors[0]} if errors else None
            self._camera = {"errors": mean, "sfm": details}
        return self._camera


FrameValues = np.ndarray | None


@dataclass(frozen=True)
class Metric:
    name: str
    title: str  # the table's column
    higher_is_better: bool
    needs: tuple[str, ...]  # MetricInputs fields that must be present
    compute: Callable[[_SampleWork], tuple[float | None, FrameValues]]
    group: str = ""  # metrics sharing a model or a computation


def _mean(values: np.ndarray) -> float:
    if np.isposinf(values).any():
        return float("inf")
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _per_frame(values: np.ndarray):
    return _mean(values), values


def _psnr(w: _SampleWork):
    return _per_frame(pixels.psnr(w.inputs.generated, w.inputs.ground_truth))


def _ssim(w: _SampleWork):
    return _per_frame(pixels.ssim(w.inputs.generated, w.inputs.ground_truth))


def _bg_psnr(w: _SampleWork):
    return _per_frame(pixels.psnr(w.inputs.generated, w.inputs.background, mask=w.background_mask()))


def _bg_ssim(w: _SampleWork):
    return _per_frame(pixels.ssim(w.inputs.generated, w.inputs.background, mask=w.background_mask()))


def _clip_v(w: _SampleWork):
    return _per_frame(clip.clip_v(w.context.clip, w.inputs.generated, w.inputs.ground_truth))


def _clip_t(w: _SampleWork):
    return _per_frame(clip.clip_t(w.context.clip, w.inputs.prompt, w.inputs.generated))


def _camera_metric(key: str):
    def compute(w: _SampleWork):
        errors = w.camera()["errors"]
        return (None if errors is None else errors[key]), None

    return compute


def _mat_pix(w: _SampleWork):
    cfg = w.context.cfg.mat_pix
    paired = cfg.reference == "ground_truth"
    references = w.inputs.ground_truth if paired else w.inputs.scene_images
    return _per_frame(matching.matched_pixels(w.inputs.generated, references, cfg, w.context.matcher, paired))


_CAMERA_NEEDS = ("cameras", "intrinsics")
REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("mat_pix", "Mat.Pix.", True, ("scene_images",), _mat_pix),
        Metric("clip_v", "CLIP-V", True, ("ground_truth",), _clip_v, group="clip"),
        Metric("psnr", "PSNR", True, ("ground_truth",), _psnr),
        Metric("ssim", "SSIM", True, ("ground_truth",), _ssim),
        Metric("rot_err", "RotErr", False, _CAMERA_NEEDS, _camera_metric("rot_err"), group="camera"),
        Metric("trans_err", "TransErr", False, _CAMERA_NEEDS, _camera_metric("trans_err"), group="camera"),
        Metric("cam_mc", "CamMC", False, _CAMERA_NEEDS, _camera_metric("cam_mc"), group="camera"),
        Metric("clip_t", "CLIP-T", True, ("prompt",), _clip_t, group="clip"),
        Metric("bg_psnr", "BG-PSNR", True, ("ground_truth", "background"), _bg_psnr),
        Metric("bg_ssim", "BG-SSIM", True, ("ground_truth", "background"), _bg_ssim),
    ]
}
assert tuple(REGISTRY) == METRIC_NAMES, "the registry and cinescene.config.eval.METRIC_NAMES must agree"


def _needs(metric: Metric, inputs: MetricInputs, context: MetricContext) -> tuple[str, ...]:
    needs = metric.needs
    if metric.name == "mat_pix" and context.cfg.mat_pix.reference == "ground_truth":
        needs = ("ground_truth",)
    return tuple(n for n in needs if getattr(inputs, n) is None)


def compute_metrics(inputs: MetricInputs, names: Sequence[str], context: MetricContext) -> SampleMetrics:
    """Every metric of ``names`` for one sample (see the module doc for absent and failed values)."""
    result = SampleMetrics()
    work = _SampleWork(inputs, context)
    for name in names:
        metric = REGISTRY[name]
        if name in context.absent:
            result.values[name] = None
            continue
        lacking = _needs(metric, inputs, context)
        if lacking:
            result.values[name] = None
            result.missing[name] = "the sample has no " + ", ".join(lacking)
            continue
        value, frames = metric.compute(work)
        result.values[name] = value
        if frames is not None:
            result.per_frame[name] = [float(v) for v in frames]
    if work._camera is not None:
        result.details["sfm"] = work._camera["sfm"]
    return result
