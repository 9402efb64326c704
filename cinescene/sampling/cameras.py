"""Camera trajectories for sampling: named presets and JSON files.

The model conditions on one OpenCV camera-to-world matrix per latent frame,
relative to the first (``model.camera.reference: first``), so only the motion
matters, not where the path sits in the world.

**JSON** (``--camera path.json``), metres, OpenCV axes (x right, y down,
z forward), one matrix per frame, 4x4 or 3x4::

    {"c2w": [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], ...], "fov": 60}

A bare list of matrices, or a clip's ``cameras.json`` (``{"frames": [{"c2w":
...}, ...]}``), works too. ``fov`` (horizontal, degrees) is optional and
only recorded. The file holds either one camera per latent frame or one per
source frame (then every 4th is used, the frames Wan's VAE keys latents on).

**Presets** (``--camera NAME [--camera-scale K]``), eased in and out; K
scales every distance and angle: ``static``; ``dolly_in`` / ``dolly_out``
(2 m forward / back); ``truck_left`` / ``truck_right`` (2 m sideways);
``pan_left`` / ``pan_right`` (60 degrees about the vertical); ``tilt_up`` /
``tilt_down`` (30 degrees); ``orbit_left`` / ``orbit_right`` (60 degrees
around a point 3 m ahead, looking at it); ``crane_up`` / ``crane_down``
(1.5 m up / down, looking at a point 3 m ahead).

**Scene cameras** (``--scene-cameras path.json``, same format, one matrix
per scene image in file-name order): only a model with scene anchoring
(``model.scene.pose_embedding``) reads them, as poses relative to the
trajectory's first camera, so they must be in the trajectory's world (a
preset starts at the origin looking along +x, z up). A ``SHARDS:KEY`` scene
brings its images' cameras; a preset or file trajectory is then moved to
start where that sample's clip starts (:func:`anchor_trajectory`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cinescene.config.paths import kind_problem
from cinescene.data.geometry import hfov_problem, look_at, pose_problem
from cinescene.errors import CineSceneError

DOLLY_M, TRUCK_M, CRANE_M, ORBIT_RADIUS_M = 2.0, 2.0, 1.5, 3.0
PAN_DEG, TILT_DEG, ORBIT_DEG = 60.0, 30.0, 60.0
FORWARD = np.array([1.0, 0.0, 0.0])  # presets start at the origin looking along world +x (z up)
LEFT = np.array([0.0, 1.0, 0.0])
# The largest --camera-scale: a preset then dollies 20 m or pans 600 degrees, far past any training clip.
MAX_CAMERA_SCALE = 10.0


def ease(n: int) -> np.ndarray:
    """n values from 0 to 1, smoothstep (zero speed at both ends)."""
    s = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    return s * s * (3.0 - 2.0 * s)


def _direction(yaw: float, pitch: float = 0.0) -> np.ndarray:
    return np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])


def _move(offset: np.ndarray) -> Callable[[float, float], np.ndarray]:
    return lambda s, k: look_at(offset * k * s, offset * k * s + FORWARD)


def _turn(yaw_deg: float, pitch_deg: float) -> Callable[[float, float], np.ndarray]:
    def pose(s, k):
        return look_at(np.zeros(3), _direction(np.radians(yaw_deg * k * s), np.radians(pitch_deg * k * s)))

    return pose


def _orbit(sign: float) -> Callable[[float, float], np.ndarray]:
    centre = ORBIT_RADIUS_M * FORWARD

    def pose(s, k):
        angle = sign * np.radians(ORBIT_DEG * k * s)
        return look_at(centre - ORBIT_RADIUS_M * np.array([np.cos(angle), -np.sin(angle), 0.0]), centre)

    return pose


def _crane(sign: float) -> Callable[[float, float], np.ndarray]:
    centre = ORBIT_RADIUS_M * FORWARD
    return lambda s, k: look_at(np.array([0.0, 0.0, sign * CRANE_M * k * s]), centre)


PRESETS: dict[str, Callable[[float, float], np.ndarray]] = {
    "static": _move(np.zeros(3)),
    "dolly_in": _move(DOLLY_M * FORWARD),
    "dolly_out": _move(-DOLLY_M * FORWARD),
    "truck_left": _move(TRUCK_M * LEFT),
    "truck_right": _move(-TRUCK_M * LEFT),
    "pan_left": _turn(PAN_DEG, 0.0),
    "pan_right": _turn(-PAN_DEG, 0.0),
    "tilt_up": _turn(0.0, TILT_DEG),
    "tilt_down": _turn(0.0, -TILT_DEG),
    "orbit_left": _orbit(1.0),
    "orbit_right": _orbit(-1.0),
    "crane_up": _crane(1.0),
    "crane_down": _crane(-1.0),
}


def preset(name: str, frames: int, scale: float = 1.0) -> np.ndarray:
    """(frames, 4, 4) camera-to-world of a named preset."""
    if name not in PRESETS:
        raise CineSceneError(
            f"unknown camera preset {name!r}; presets: {', '.join(sorted(PRESETS))} "
            "(or a JSON trajectory file)"
        )
    if not (np.isfinite(scale) and 0 <= scale <= MAX_CAMERA_SCALE):
        raise CineSceneError(f"--camera-scale must be in [0, {MAX_CAMERA_SCALE:g}], got {scale}")
    return np.stack([PRESETS[name](s, scale) for s in ease(frames)])


def _matrices(data) -> tuple[np.ndarray, float | None]:
    fov = None
    if isinstance(data, dict):
        fov = data.get("fov")
        if "c2w" in data:
            data = data["c2w"]
        elif "frames" in data:
            data = [frame["c2w"] for frame in data["frames"]]
        else:
            raise ValueError('expected a "c2w" list (or a clip\'s "frames")')
    if not _all_numbers(data):
        raise ValueError("expected lists of numbers (JSON numbers, not strings or booleans)")
    poses = np.asarray(data, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"expected per-frame 4x4 or 3x4 matrices, got shape {list(poses.shape)}")
    if poses.shape[1] == 3:
        poses = np.concatenate([poses, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(poses), 1, 1))], axis=1)
    if fov is not None and hfov_problem(fov):
        raise ValueError(f'"fov": {hfov_problem(fov)}')
    return poses, None if fov is None else float(fov)


def _all_numbers(data) -> bool:
    """A nest of lists whose leaves are JSON numbers (``true`` and ``"1"`` are not)."""
    if isinstance(data, list):
        return all(_all_numbers(item) for item in data)
    return isinstance(data, (int, float)) and not isinstance(data, bool)


def _read_poses(path: Path, what: str) -> tuple[np.ndarray, float | None]:
    """Checked camera-to-world matrices (N, 4, 4) and the optional fov of a JSON file (format: module doc)."""
    problem = kind_problem(path, "file")
    if problem is not None:
        raise CineSceneError(f"camera file {path} {problem}")
    try:
        poses, fov = _matrices(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise CineSceneError(f"{path}: not {what} ({reason})") from None
    problem = pose_problem(poses)
    if problem is not None:
        raise CineSceneError(f"{path}: {problem}")
    return poses, fov


def load_trajectory(path: str | Path, latent_frames: int) -> tuple[np.ndarray, float | None]:
    """(latent_frames, 4, 4) camera-to-world and the optional fov from a JSON file (format: module doc)."""
    path = Path(path)
    poses, fov = _read_poses(path, "a camera trajectory")
    source_frames = (latent_frames - 1) * 4 + 1
    if len(poses) == latent_frames:
        return poses, fov
    if len(poses) == source_frames:
        return poses[::4], fov
    raise CineSceneError(
        f"{path}: {len(poses)} cameras; the model generates {latent_frames} latent frames "
        f"({source_frames} source frames): give one camera per latent or per source frame"
    )


def resolve_camera(spec: str, latent_frames: int, scale: float = 1.0) -> tuple[np.ndarray, float | None, str]:
    """``--camera`` (a preset name or a JSON path) -> (cameras (T, 4, 4), fov or None, description)."""
    if spec in PRESETS or not spec.endswith(".json") and not Path(spec).exists():
        return preset(spec, latent_frames, scale), None, f"preset {spec} x{scale:g}"
    poses, fov = load_trajectory(spec, latent_frames)
    return poses, fov, f"file {spec}"


def load_scene_cameras(path: str | Path, count: int) -> np.ndarray:
    """(count, 4, 4) camera-to-world of a scene folder's images (``--scene-cameras``), one per image in
    file-name order, in the world of the ``--camera`` trajectory (same JSON format as a trajectory)."""
    path = Path(path)
    poses, _ = _read_poses(path, "scene cameras")
    if len(poses) != count:
        raise CineSceneError(
            f"{path}: {len(poses)} cameras for {count} scene images (one per image, in file-name order)"
        )
    return poses


def anchor_trajectory(cameras: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The trajectory moved rigidly so that its first camera is ``first``: ``first @ inv(C_0) @ C_i``.

    The model's camera input is relative to the first frame, so this changes nothing there; it places a preset
    or a file's path where a shard sample's clip starts, the frame its scene cameras are anchored to."""
    cameras = np.asarray(cameras, dtype=np.float64)
    return np.asarray(first, dtype=np.float64) @ np.linalg.inv(cameras[0]) @ cameras
