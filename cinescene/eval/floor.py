"""The metric pipeline's floor, measured on ground truth: ``python -m cinescene.eval.floor``.

A generated video can score no better than the ground truth itself, so the
floor tells what a perfect model would get from *our* pipeline, and the
control rows show that the metrics can tell right from wrong:

* pixels: the ground truth against itself (PSNR inf, SSIM 1, the same with
  the background mask);
* camera: SfM on the synthetic renderer's ground-truth video, known cameras
  and intrinsics, against its own trajectory (the floor); the same video with
  its frames shuffled (frame 0 kept first); the right video against another
  clip's trajectory;
* Mat.Pix.: ground-truth frames against their own scene images, against an
  unrelated scene's images.

Clips come from the synthetic renderer (:func:`render_clip`), seeded, at
256x256 or more; the table printed is what docs/EVAL.md records.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from cinescene.config.eval import EvalConfig
from cinescene.data.synth.generate import render_synthetic_clip

from .metrics import camera, matching, pixels, sfm

SIZE = 256
FRAMES = 17
SCENE_IMAGES = 6
# Seed-0 clips of the synthetic renderer whose scene is a textured room (meta["scene"]["kind"] == "room"),
# every camera move except the rotation-only pans (no baseline, so SfM cannot triangulate).
ROOM_CLIPS = (0, 2, 5, 7, 12, 13, 15, 24, 29, 30, 33, 37)
UNRELATED_CLIP = 3  # a snowfield landscape: no room, no shared texture


def render_clip(
    index: int, seed: int = 0, size: int = SIZE, frames: int = FRAMES, scene_images: int = SCENE_IMAGES
):
    return render_synthetic_clip(index, seed, frames, (size, size), scene_images)


def shuffled_order(frames: int, seed: int = 0) -> np.ndarray:
    """A permutation of the frames that keeps frame 0 first (errors are relative to it)."""
    rest = np.random.default_rng(seed).permutation(np.arange(1, frames))
    return np.concatenate([[0], rest])


@dataclass
class CameraFloor:
    truth: dict[str, float] | None  # errors of the GT video vs its own trajectory (None: SfM failed)
    shuffled: dict[str, float] | None  # shuffled frames vs the trajectory
    wrong: dict[str, float] | None  # the GT video's poses vs another clip's trajectory
    registered: int
    shuffled_registered: int
    frames: int
    failures: list[str] = field(default_factory=list)


def camera_floor(clip, other_trajectory: np.ndarray, cfg: EvalConfig) -> CameraFloor:
    K = clip.K[0]
    truth = sfm.estimate_poses(clip.video, K, cfg.sfm)[0]
    order = shuffled_order(len(clip.video))
    mixed = sfm.estimate_poses(clip.video[order], K, cfg.sfm)[0]

    def errors(result, requested):
        return (
            camera.camera_errors(requested[result.registered], result.c2w[result.registered])
            if result.ok
            else None
        )

    return CameraFloor(
        truth=errors(truth, clip.c2w),
        shuffled=errors(mixed, clip.c2w),
        wrong=errors(truth, other_trajectory[: len(clip.c2w)]),
        registered=truth.num_registered,
        shuffled_registered=mixed.num_registered,
        frames=len(clip.video),
        failures=[f for f in (truth.failure, mixed.failure) if f],
    )


def mat_pix_floor(clip, unrelated_images: np.ndarray, cfg: EvalConfig, frames: int | None = None):
    """(matched pixels vs its own scene images, vs the unrelated scene's), mean over frames."""
    video = (
        clip.video if frames is None else clip.video[np.linspace(0, len(clip.video) - 1, frames).astype(int)]
    )
    own = matching.matched_pixels(video, clip.scene_images, cfg.mat_pix).mean()
    other = matching.matched_pixels(video, unrelated_images, cfg.mat_pix).mean()
    return float(own), float(other)


def pixel_floor(clip, cfg: EvalConfig) -> dict[str, float]:
    mask = pixels.background_mask(clip.video, clip.video_bg, cfg.background.threshold, cfg.background.dilate)
    return {
        "psnr": float(pixels.psnr(clip.video, clip.video).mean()),
        "ssim": float(pixels.ssim(clip.video, clip.video).mean()),
        "bg_psnr": float(pixels.psnr(clip.video_bg, clip.video_bg, mask=mask).mean()),
        "bg_ssim": float(pixels.ssim(clip.video_bg, clip.video_bg, mask=mask).mean()),
    }


def _fmt(errors: dict[str, float] | None) -> str:
    if errors is None:
        return "SfM failed"
    return " / ".join(f"{errors[k]:.3f}" for k in ("rot_err", "trans_err", "cam_mc"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cinescene.eval.floor", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--clips", default=",".join(map(str, ROOM_CLIPS)), help="renderer clip indices (seed 0)"
    )
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--frames", type=int, default=FRAMES)
    parser.add_argument("--matching", choices=["sequential", "exhaustive"], default="sequential")
    args = parser.parse_args(argv)
    cfg = EvalConfig()
    cfg.sfm.matching = args.matching
    indices = [int(i) for i in args.clips.split(",")]
    unrelated = render_clip(UNRELATED_CLIP, size=args.size, frames=1)
    print(
        f"floor: {len(indices)} synthetic clips, {args.frames} frames at {args.size}x{args.size}, SfM "
        f"{args.matching} matching; RotErr / TransErr / CamMC summed over the frames (CamI2V)"
    )
    print(
        f"{'clip':>4} {'camera move':<12} {'registered':>10}  {'ground truth':<22} {'shuffled frames':<22} "
        f"{'wrong trajectory':<22} {'Mat.Pix own':>11} {'unrelated':>9}"
    )
    truth_rows, shuffled_rows, wrong_rows, ratios = [], [], [], []
    failures = 0
    start = time.perf_counter()
    trajectories = {}
    for index in indices:
        clip = render_clip(index, size=args.size, frames=args.frames)
        trajectories[index] = clip
    for k, index in enumerate(indices):
        clip = trajectories[index]
        other = trajectories[indices[(k + 1) % len(indices)]].c2w
        floor = camera_floor(clip, other, cfg)
        own, foreign = mat_pix_floor(clip, unrelated.scene_images, cfg)
        failures += floor.truth is None
        if floor.truth is not None:
            truth_rows.append(floor.truth)
            shuffled_rows.append(floor.shuffled)
            wrong_rows.append(floor.wrong)
        ratios.append((own, foreign))
        print(
            f"{index:>4} {clip.meta['trajectory']['kind']:<12} {floor.registered:>4}/{floor.frames:<5}  "
            f"{_fmt(floor.truth):<22} {_fmt(floor.shuffled):<22} {_fmt(floor.wrong):<22} {own:>11.1f} "
            f"{foreign:>9.1f}"
        )
    pix = pixel_floor(trajectories[indices[0]], cfg)
    print(
        f"pixels, ground truth vs itself: PSNR {pix['psnr']}, SSIM {pix['ssim']}, background PSNR "
        f"{pix['bg_psnr']}, background SSIM {pix['bg_ssim']}"
    )
    if truth_rows:
        median = {k: float(np.median([r[k] for r in truth_rows])) for k in truth_rows[0]}
        print(
            f"camera floor (median over the {len(truth_rows)} reconstructions): {_fmt(median)}; SfM failed "
            f"on {failures} of {len(indices)} ground-truth videos"
        )
        worse = sum(
            1
            for t, s, w in zip(truth_rows, shuffled_rows, wrong_rows)
            if (s is None or s["cam_mc"] > t["cam_mc"]) and (w is None or w["cam_mc"] > t["cam_mc"])
        )
        print(
            f"shuffled frames and the wrong trajectory score worse (CamMC, or SfM fails) on {worse} of "
            f"{len(truth_rows)}"
        )
    print(
        f"Mat.Pix.: own scene {np.mean([o for o, _ in ratios]):.1f}, unrelated scene "
        f"{np.mean([f for _, f in ratios]):.1f} (mean over clips); {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
