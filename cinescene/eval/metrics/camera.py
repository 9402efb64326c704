"""RotErr, TransErr and CamMC between a requested and an estimated trajectory, as CamI2V defines them.

Both trajectories are OpenCV camera-to-world (N, 4, 4). Each is first made
relative to its own first frame (``inv(C_0) @ C_i``, so frame 0 is the
identity and the world's placement drops out), then its translations are
divided by its own largest translation norm (SfM has no metric scale; so each
trajectory spans a unit ball). Then, summed over the frames:

* RotErr   = sum_i arccos((tr(R_gt,i^T R_est,i) - 1) / 2)       (radians)
* TransErr = sum_i ||t_gt,i - t_est,i||_2
* CamMC    = sum_i ||[R|t]_gt,i - [R|t]_est,i||_F              (3x4 matrices)

Sums, not means, as in CamI2V (evaluation/glomap_evaluation.py), so figures
grow with the number of frames compared; docs/EVAL.md says how many we use.
A trajectory that does not move (every translation zero) keeps zero
translations instead of dividing by zero.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def as_c2w(poses) -> np.ndarray:
    """(N, 4, 4) float64 from (N, 4, 4) or (N, 3, 4) camera-to-world matrices."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"expected camera-to-world matrices (N, 4, 4) or (N, 3, 4), got {poses.shape}")
    if poses.shape[1] == 3:
        bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (len(poses), 1, 4))
        poses = np.concatenate([poses, bottom], axis=1)
    return poses


def relative_to_first(c2w) -> np.ndarray:
    c2w = as_c2w(c2w)
    return np.linalg.inv(c2w[0]) @ c2w


def normalize_translation(c2w) -> np.ndarray:
    """Translations divided by the largest translation norm (unchanged when none moves)."""
    out = as_c2w(c2w).copy()
    scale = float(np.linalg.norm(out[:, :3, 3], axis=-1).max())
    if scale > EPS:
        out[:, :3, 3] /= scale
    return out


def rotation_errors(gt, est) -> np.ndarray:
    """(N,) radians between corresponding rotations."""
    r_gt, r_est = as_c2w(gt)[:, :3, :3], as_c2w(est)[:, :3, :3]
    cos = (np.einsum("nji,nji->n", r_gt, r_est) - 1.0) / 2.0  # tr(R_gt^T R_est)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def camera_errors(requested, estimated) -> dict[str, float]:
    """{"rot_err", "trans_err", "cam_mc"} over corresponding frames (see the module doc)."""
    gt, est = as_c2w(requested), as_c2w(estimated)
    if gt.shape != est.shape:
        raise ValueError(f"trajectories of {len(gt)} and {len(est)} frames")
    gt = normalize_translation(relative_to_first(gt))
    est = normalize_translation(relative_to_first(est))
    return {
        "rot_err": float(rotation_errors(gt, est).sum()),
        "trans_err": float(np.linalg.norm(gt[:, :3, 3] - est[:, :3, 3], axis=-1).sum()),
        "cam_mc": float(np.linalg.norm((gt[:, :3, :4] - est[:, :3, :4]).reshape(len(gt), 12), axis=-1).sum()),
    }


def poses_to_json(c2w) -> list:
    """(N, 4, 4) poses as JSON data: nested lists, ``None`` for a frame whose pose is unknown (NaN rows)."""
    return [None if np.isnan(pose).any() else pose.tolist() for pose in as_c2w(c2w)]


def poses_from_json(data) -> np.ndarray:
    """The inverse of :func:`poses_to_json`: (N, 4, 4) float64, NaN for the unknown frames."""
    if not isinstance(data, list) or not data:
        raise ValueError("expected a non-empty list of 4x4 poses")
    nan = np.full((4, 4), np.nan)
    return as_c2w(np.stack([nan if pose is None else np.asarray(pose, dtype=np.float64) for pose in data]))
