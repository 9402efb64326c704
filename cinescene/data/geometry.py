"""Camera geometry shared by the renderer, the converter, the loader and the tests.

Conventions (every camera this package writes or returns):

* World frame: right-handed, z up, metres.
* Camera frame: OpenCV -- x right, y down, z forward.
* ``c2w``: 4x4 camera-to-world matrix; its columns are the camera's x/y/z axes
  and its position, in world coordinates.
* ``K``: 3x3 pixel intrinsics. Pixel (row i, column j) covers
  ``[j, j+1) x [i, i+1)``; its centre is ``(j + 0.5, i + 0.5)``.
* Equirectangular panoramas (H x 2H) are aligned with the world axes: the
  image centre looks along +x, the top row looks up (+z), and moving right in
  the image turns right (towards -y), so the panorama is not mirrored when seen
  from inside. Longitude ``lon = atan2(y, x)`` decreases from pi at the left
  edge to -pi at the right edge; latitude ``lat = asin(z)``.
"""

from __future__ import annotations

import math

import numpy as np

UP = np.array([0.0, 0.0, 1.0])
# Checks of camera-to-world matrices read from files (clips, trajectories): how far R^T R may be from the
# identity, and the largest camera position, in metres, that a scene of ours can hold (float32, which the
# model computes in, keeps millimetres up to about 10 km).
ROTATION_TOLERANCE = 1e-3
MAX_TRANSLATION_M = 1e4
# A pinhole camera's horizontal field of view, degrees: outside this, focal lengths become absurd (180 gives
# 2e-15 pixels) and no lens of a scene-decoupled dataset has it.
MIN_HFOV_DEG, MAX_HFOV_DEG = 1.0, 170.0


def pose_problem(c2w) -> str | None:
    """What is wrong with camera-to-world matrices (N, 4, 4) read from a file, or None: non-finite values,
    a bottom row other than [0 0 0 1], a 3x3 part that is not a rotation (scaled, sheared or mirrored:
    determinant -1), a position farther than MAX_TRANSLATION_M from the origin."""
    poses = np.asarray(c2w, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        return f"expected 4x4 camera-to-world matrices, got shape {list(poses.shape)}"
    if not np.isfinite(poses).all():
        return f"camera {int(np.argwhere(~np.isfinite(poses))[0][0])} holds non-finite values"
    bottom = np.abs(poses[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    if (bottom > 1e-6).any():
        i = int(np.argmax(bottom > 1e-6))
        return f"camera {i} has the bottom row {poses[i, 3].tolist()}, not [0, 0, 0, 1]"
    rotations = poses[:, :3, :3]
    error = np.abs(rotations.transpose(0, 2, 1) @ rotations - np.eye(3)).max(axis=(1, 2))
    if (error > ROTATION_TOLERANCE).any():
        i = int(np.argmax(error > ROTATION_TOLERANCE))
        return f"camera {i}: the 3x3 part is not a rotation (camera-to-world without scale or shear)"
    det = np.linalg.det(rotations)
    if (det < 0).any():
        return f"camera {int(np.argmax(det < 0))}: the 3x3 part is mirrored (determinant -1), not a rotation"
    far = np.linalg.norm(poses[:, :3, 3], axis=1)
    if (far > MAX_TRANSLATION_M).any():
        i = int(np.argmax(far > MAX_TRANSLATION_M))
        return f"camera {i} is {far[i]:.3g} m from the origin (at most {MAX_TRANSLATION_M:g} m)"
    return None


def hfov_problem(value) -> str | None:
    """What is wrong with a horizontal field of view in degrees read from a file or a flag, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a horizontal field of view in degrees, got {value!r}"
    if not (math.isfinite(value) and MIN_HFOV_DEG <= value <= MAX_HFOV_DEG):
        bounds = f"[{MIN_HFOV_DEG:g}, {MAX_HFOV_DEG:g}]"
        return f"expected a horizontal field of view in {bounds} degrees, got {value!r}"
    return None


def look_at(eye, target, up=UP) -> np.ndarray:
    """OpenCV camera-to-world for a camera at ``eye`` looking at ``target`` (no roll)."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    norm = np.linalg.norm(right)
    if norm < 1e-9:  # looking straight up or down: any right vector orthogonal to forward
        right = np.cross(forward, np.array([1.0, 0.0, 0.0]))
        norm = np.linalg.norm(right)
    right /= norm
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def yaw_pitch_c2w(eye, yaw: float, pitch: float) -> np.ndarray:
    """Camera at ``eye`` looking along (yaw about +z from +x, pitch up from the horizon), radians."""
    direction = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    return look_at(eye, np.asarray(eye, dtype=np.float64) + direction)


def intrinsics(height: int, width: int, hfov: float) -> np.ndarray:
    """Pinhole intrinsics with square pixels and the principal point at the image centre (hfov in radians)."""
    focal = (width / 2.0) / np.tan(hfov / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def pixel_rays(c2w: np.ndarray, K: np.ndarray, height: int, width: int):
    """World-space ray origins (H*W, 3) and unit directions (H*W, 3) through the pixel centres."""
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    cam = np.stack([(jj - K[0, 2]) / K[0, 0], (ii - K[1, 2]) / K[1, 1], np.ones_like(jj)], axis=-1)
    dirs = cam.reshape(-1, 3) @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
    return origins, dirs


def project(points: np.ndarray, c2w: np.ndarray, K: np.ndarray):
    """World points (N, 3) -> pixel coordinates (N, 2) as (x=column, y=row) and depths (N,)."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = cam[:, 2]
    uv = (cam[:, :2] / depth[:, None]) * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]
    return uv, depth


def equirect_directions(height: int, width: int) -> np.ndarray:
    """Unit world directions (H*W, 3) through the pixel centres of an equirectangular panorama."""
    lon = np.pi - 2.0 * np.pi * (np.arange(width) + 0.5) / width
    lat = np.pi / 2.0 - np.pi * (np.arange(height) + 0.5) / height
    lon, lat = np.meshgrid(lon, lat)
    dirs = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)
    return dirs.reshape(-1, 3)


def sample_equirect(panorama: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Bilinear lookup of world directions (N, 3) in a panorama (H, W, C); wraps in longitude.

    Returns float64 values (N, C) in the panorama's units.
    """
    height, width = panorama.shape[:2]
    lon = np.arctan2(dirs[:, 1], dirs[:, 0])
    lat = np.arcsin(np.clip(dirs[:, 2] / np.linalg.norm(dirs, axis=-1), -1.0, 1.0))
    x = (np.pi - lon) / (2.0 * np.pi) * width - 0.5
    y = np.clip((np.pi / 2.0 - lat) / np.pi * height - 0.5, 0.0, height - 1.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = (x0 + 1) % width, np.minimum(y0 + 1, height - 1)
    x0 %= width
    pano = panorama.astype(np.float64)
    top = pano[y0, x0] * (1 - fx) + pano[y0, x1] * fx
    bottom = pano[y1, x0] * (1 - fx) + pano[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def perspective_from_equirect(
    panorama: np.ndarray, c2w: np.ndarray, K: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Cut a perspective view (H, W, C) out of a panorama taken at the camera's position.

    Only the camera's rotation matters: a panorama has no parallax. Output dtype
    follows the input (uint8 is rounded).
    """
    _, dirs = pixel_rays(c2w, K, height, width)
    values = sample_equirect(panorama, dirs).reshape(height, width, -1)
    if panorama.dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(panorama.dtype)


def rotation_angle(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle (radians) of the relative rotation between two 3x3 rotations."""
    cos = (np.trace(r_a.T @ r_b) - 1.0) / 2.0
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def panorama_views(
    rng: np.random.Generator,
    panorama: np.ndarray,
    center,
    count: int,
    height: int,
    width: int,
    hfov: float = np.radians(90.0),
):
    """``count`` perspective views cut from a panorama taken at ``center``.

    Yaws are spread evenly over 360 degrees from a random start (with a little
    jitter), pitches are small and random, so neighbouring views overlap at a
    90-degree field of view. Returns images (S, H, W, C), c2w (S, 4, 4), K (S, 3, 3).
    """
    yaw0 = rng.uniform(0, 2 * np.pi)
    K = intrinsics(height, width, hfov)
    c2ws, images = [], []
    for k in range(count):
        yaw = yaw0 + 2 * np.pi * k / count + rng.uniform(-0.15, 0.15)
        c2w = yaw_pitch_c2w(center, yaw, rng.uniform(-0.25, 0.1))
        c2ws.append(c2w)
        images.append(perspective_from_equirect(panorama, c2w, K, height, width))
    return np.stack(images), np.stack(c2ws), np.repeat(K[None], count, 0)
