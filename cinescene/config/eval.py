"""Evaluation: what `cinescene eval` and the in-training eval hook sample and measure.

One section serves both: `cinescene eval CKPT` reads it from the checkpoint's
config (command-line flags and KEY=VALUE overrides win), the training hook
reads it from the run's config. The metric definitions, and why each default
is what it is, are in docs/EVAL.md; the metric names are declared once, in
:data:`METRIC_NAMES`, and the registry (``cinescene.eval.metrics``) provides
exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ConfigError, in_range, non_negative, one_of, positive
from .data import check_object_url, is_object_url

#: Every metric the registry computes, in the order of the paper's table, then ours.
# The most sampling steps a sampler is given (`sample --steps`, `eval --steps`, eval.sample_steps): Wan
# samples with 50; a billion only never ends.
MAX_SAMPLE_STEPS = 1000
METRIC_NAMES = (
    "mat_pix",
    "clip_v",
    "psnr",
    "ssim",
    "rot_err",
    "trans_err",
    "cam_mc",
    "clip_t",
    "bg_psnr",
    "bg_ssim",
)
SFM_MATCHING = ("sequential", "exhaustive")
MATCHERS = ("sift", "orb")
MAT_PIX_REFERENCES = ("scene_images", "ground_truth")
MAT_PIX_AGGREGATES = ("sum", "mean")


@dataclass
class ClipConfig:
    # A local directory holding a transformers CLIPModel with its tokenizer and image processor
    # (save_pretrained layout), or its repo id (e.g. openai/clip-vit-large-patch14) in the local Hugging
    # Face cache (cinescene/hub.py). Read with local_files_only. Unset: CLIP-V and CLIP-T are reported as
    # absent, with one line saying why.
    weights: str | None = None
    # Frames per CLIP forward (memory bound on a GPU; the result does not depend on it).
    batch_size: int = 16

    def validate(self) -> None:
        positive(self.batch_size, "batch_size")


@dataclass
class SfMConfig:
    """Camera metrics: poses of the generated frames by COLMAP SfM (pycolmap), as CamI2V estimates them."""

    # Image pairs to match: "sequential" (each frame with its next `overlap` frames, CamI2V's choice)
    # or "exhaustive" (every pair; better for big rotations, quadratic in frames).
    matching: str = "sequential"
    overlap: int = 10
    # SIFT keypoints per frame.
    max_features: int = 8192
    # SIFT with affine shape estimation and domain-size pooling, and guided matching, as CamI2V runs
    # COLMAP. On the synthetic rooms they turn many wrong reconstructions into right ones (docs/EVAL.md).
    affine_shape: bool = True
    guided_matching: bool = True
    # Frames are upscaled (bicubic, intrinsics scaled alike) until the shorter side has at least this
    # many pixels: SIFT finds few features on tiny frames. 0 = never upscale.
    min_size: int = 256
    # A reconstruction counts as a failure unless it registers frame 0 and at least this fraction of
    # the frames; errors are computed over the registered frames only.
    min_registered: float = 1.0
    # Independent reconstructions per video, averaged (CamI2V averages 5 trials); each trial uses
    # seed + trial as COLMAP's random seed.
    trials: int = 1
    seed: int = 0

    def validate(self) -> None:
        one_of(self.matching, "matching", SFM_MATCHING)
        positive(self.overlap, "overlap")
        positive(self.max_features, "max_features")
        non_negative(self.min_size, "min_size")
        in_range(self.min_registered, "min_registered", 0.0, 1.0)
        positive(self.trials, "trials")


@dataclass
class MatPixConfig:
    """Mat.Pix.: matched pixels between generated frames and a reference, inliers of a fundamental matrix."""

    # Keypoint matcher (cinescene.eval.metrics.matching registers more): "sift" (the weight-free
    # stand-in for the paper's GIM) or "orb".
    matcher: str = "sift"
    # What generated frames are matched against: the scene images the model was given (what the
    # metric is about: is the given scene in the video) or the ground-truth frame at the same index.
    reference: str = "scene_images"
    # Per frame, counts over several reference images are summed ("sum") or averaged ("mean").
    aggregate: str = "sum"
    # Lowe's ratio test on the two nearest descriptors. 0.7, stricter than Lowe's 0.8: at 0.8 the
    # repetitive textures of the synthetic rooms match another room's images about as well as their own.
    ratio: float = 0.7
    # USAC MAGSAC++ fundamental matrix: threshold (pixels), confidence, iterations.
    ransac_threshold: float = 1.0
    confidence: float = 0.999
    max_iters: int = 10000

    def validate(self) -> None:
        one_of(self.matcher, "matcher", MATCHERS)
        one_of(self.reference, "reference", MAT_PIX_REFERENCES)
        one_of(self.aggregate, "aggregate", MAT_PIX_AGGREGATES)
        in_range(self.ratio, "ratio", 0.0, 1.0)
        positive(self.ransac_threshold, "ransac_threshold")
        in_range(self.confidence, "confidence", 0.0, 1.0)
        positive(self.max_iters, "max_iters")


@dataclass
class BackgroundConfig:
    """The subject mask of background PSNR/SSIM, from the ground truth with and without the subject."""

    # A pixel shows the subject where any channel of |with - without| exceeds this (0..255). 0 suits
    # renders that are identical outside the subject; raise it for sources with noise or compression.
    threshold: int = 0
    # Grow the mask by this many pixels (square dilation): soft subject edges and shadows stay out.
    dilate: int = 2

    def validate(self) -> None:
        in_range(self.threshold, "threshold", 0, 255)
        non_negative(self.dilate, "dilate")


@dataclass
class EvalConfig:
    # The training eval hook (cinescene/train/eval_hook.py) runs every N training steps and after the
    # last one; 0 = off. Each call generates `num_samples` videos with `sample_steps` steps: on a
    # cluster, sized so that it costs a few percent of the wall time (the hook logs its share).
    every_steps: int = 0
    # Held-out shards (a directory with manifest.json, or s3://bucket/prefix), the one place
    # held-out data is named: the hook and `cinescene eval` read it (`--data` overrides it).
    # Samples also in the training shards are left out. Required when every_steps > 0.
    data: str | None = None
    # Held-out samples per evaluation, a fixed set drawn by `seed` (0 = every held-out sample).
    num_samples: int = 2
    # Seeds the choice of samples and each sample's initial noise (noise per sample key, so the
    # videos do not depend on the number of ranks).
    seed: int = 0
    sample_steps: int = 50
    # Classifier-free guidance scale (1 = conditional branch only).
    cfg_scale: float = 5.0
    # Metrics to compute (names in METRIC_NAMES; docs/EVAL.md defines each).
    metrics: list[str] = field(default_factory=lambda: list(METRIC_NAMES))
    # The hook writes each call's mp4s and contact sheet into <run.dir>/eval/step_XXXXXXXX/ and
    # logs them to W&B (a table of prompt, ground truth and generated video, and the sheet); off,
    # it logs only the metrics (`cinescene eval` always writes its videos).
    log_videos: bool = True
    # Frame rate of the source clips; a pixel-proxy model generates every 4th frame, so its videos
    # play at fps / 4.
    fps: float = 16.0
    clip: ClipConfig = field(default_factory=ClipConfig)
    sfm: SfMConfig = field(default_factory=SfMConfig)
    mat_pix: MatPixConfig = field(default_factory=MatPixConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)

    def validate(self) -> None:
        non_negative(self.every_steps, "every_steps")
        if self.every_steps and not self.data:
            raise ConfigError(
                "data",
                "required when eval.every_steps > 0: the held-out shards the hook "
                "evaluates on (a directory with manifest.json)",
            )
        if self.data and is_object_url(self.data):
            check_object_url(self.data, "data")
        non_negative(self.num_samples, "num_samples")
        in_range(self.sample_steps, "sample_steps", 1, MAX_SAMPLE_STEPS)
        non_negative(self.cfg_scale, "cfg_scale")
        positive(self.fps, "fps")
        check_metric_names(self.metrics, "metrics")


def check_metric_names(names, key: str) -> None:
    """At least one name, each a known metric, none twice (ConfigError naming ``key`` otherwise)."""
    if not names:
        raise ConfigError(key, f"expected at least one of {list(METRIC_NAMES)}")
    for name in names:
        one_of(name, key, METRIC_NAMES)
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(key, f"{name!r} is listed twice")
        seen.add(name)
