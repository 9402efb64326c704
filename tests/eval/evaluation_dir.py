"""An evaluation directory written as `cinescene eval` writes it, without a model (for report tests)."""

from __future__ import annotations

from pathlib import Path


def write_evaluation(out: Path, clips, label: str = "test", generated=None, sfm=None) -> dict:
    """An evaluation directory as `cinescene eval` writes it (records, videos, scene images, metrics.json,
    table.md, report.html) for synthetic ``clips`` (pixel proxy, every 4th frame), without a model: the
    generated video is ``generated(clip)`` (default: the ground truth with noise) and each sample's SfM
    outcome ``sfm(clip, index)`` (default: the requested cameras recovered, or a failure for odd indices),
    so no COLMAP runs. Returns metrics.json's data."""
    import numpy as np

    from cinescene.config.eval import EvalConfig
    from cinescene.eval.evaluate import SampleResult, metric_inputs, prepare_dir, write_sample
    from cinescene.eval.metrics import MetricContext, camera, compute_metrics
    from cinescene.eval.report import write_report
    from cinescene.sampling.inputs import ShardSample
    from cinescene.sampling.spec import DataSpec

    names = ["psnr", "bg_psnr"]
    context = MetricContext(EvalConfig(metrics=names))
    first = clips[0]
    spec = DataSpec(
        encoder={"name": "none"},
        frames=len(first.video),
        size=first.video.shape[1:3],
        scene_images=len(first.scene_images),
        scene_size=first.scene_images.shape[1:3],
        pixel_pool=4,
        source="test",
    )
    rng = np.random.default_rng(0)

    def noisy(clip):
        frames = clip.video[::4].astype(np.int16) + rng.integers(-20, 21, clip.video[::4].shape)
        return np.clip(frames, 0, 255).astype(np.uint8)

    def recovered(clip, index):
        poses = np.array(clip.c2w[::4], dtype=np.float64)
        if index % 2:
            return {
                "frames": len(poses),
                "registered": 0,
                "failure": "no reconstruction",
                "trials": [],
                "recovered": None,
            }
        poses[:, :3, 3] *= 2.5  # SfM's scale is arbitrary: the metrics normalise it away
        return {
            "frames": len(poses),
            "registered": len(poses),
            "failure": None,
            "trials": [],
            "recovered": camera.poses_to_json(poses),
        }

    prepare_dir(out)
    for index, clip in enumerate(clips):
        sample = ShardSample(
            key=clip.clip_id,
            index=index,
            prompt=clip.prompt,
            text=None,
            scene=clip.scene_images,
            scene_latents=None,
            cameras=clip.c2w[::4],
            scene_cameras=clip.scene_c2w,
            intrinsics=clip.K,
            video=clip.video,
            video_bg=clip.video_bg,
        )
        frames = (generated or noisy)(clip)
        inputs = metric_inputs(sample, frames, spec)
        metrics = compute_metrics(inputs, names, context)
        metrics.details["sfm"] = (sfm or recovered)(clip, index)
        write_sample(out, sample, SampleResult(clip.clip_id, frames, inputs, metrics), context, 4.0, {})
    header = {
        "checkpoint": "none",
        "step": 0,
        "weights": "trained",
        "data": "synthetic",
        "settings": {"steps": 1, "cfg": 1.0, "shift": 1.0, "seed": 0},
    }
    keys = [clip.clip_id for clip in clips]
    return write_report(out, keys, names, header, {}, label)
