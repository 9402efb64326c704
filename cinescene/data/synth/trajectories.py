"""Camera trajectories: orbit, pan, dolly, truck, crane and two mixes, eased in and out.

Every trajectory keeps the camera inside the scene's clear disc, between its
height limits and at least ``MIN_SUBJECT_DISTANCE`` from the subject. Orbits
sweep 60-200 degrees and pans 60-150 degrees, so rotations past 90 degrees are
common. The returned phrase completes "The camera ..." in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import look_at, rotation_angle

MIN_SUBJECT_DISTANCE = 1.2
KINDS = ["orbit", "pan", "dolly", "truck", "crane", "orbit_crane", "dolly_pan"]


@dataclass
class Trajectory:
    kind: str
    phrase: str  # "orbits 120 degrees counter-clockwise around the subject"
    c2w: np.ndarray  # (F, 4, 4) OpenCV camera-to-world
    max_rotation_deg: float


def _ease(n: int) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    return s * s * (3.0 - 2.0 * s)


def _direction(yaw, pitch=0.0) -> np.ndarray:
    yaw, pitch = np.broadcast_arrays(np.asarray(yaw, dtype=np.float64), np.asarray(pitch, dtype=np.float64))
    return np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=-1)


def _constrain(eyes: np.ndarray, roots: np.ndarray, center: np.ndarray, radius: float, z_range) -> np.ndarray:
    eyes = eyes.copy()
    offset = eyes[:, :2] - center
    dist = np.linalg.norm(offset, axis=-1, keepdims=True)
    eyes[:, :2] = center + offset * np.minimum(1.0, radius / np.maximum(dist, 1e-9))
    away = eyes[:, :2] - roots[:, :2]
    gap = np.linalg.norm(away, axis=-1, keepdims=True)
    push = np.where(gap < MIN_SUBJECT_DISTANCE, MIN_SUBJECT_DISTANCE / np.maximum(gap, 1e-9), 1.0)
    eyes[:, :2] = roots[:, :2] + away * push
    eyes[:, 2] = np.clip(eyes[:, 2], *z_range)
    return eyes


def _reach(origin: np.ndarray, angle: float, center: np.ndarray, radius: float) -> float:
    """How far one can go from ``origin`` (xy) along ``angle`` before leaving the clear disc."""
    u = _direction(angle)[:2]
    offset = origin[:2] - center
    b = float(offset @ u)
    return max(0.0, -b + float(np.sqrt(max(b * b - (offset @ offset - radius * radius), 0.0))))


def build_trajectory(
    rng: np.random.Generator,
    kind: str,
    frames: int,
    look: np.ndarray,
    roots: np.ndarray,
    center: np.ndarray,
    radius: float,
    z_range,
) -> Trajectory:
    """Per-frame cameras of one ``kind`` around a subject whose look points are ``look`` (F, 3)."""
    s = _ease(frames)
    focus = look.mean(axis=0)
    angle = rng.uniform(0, 2 * np.pi)
    z_lo, z_hi = z_range
    eye_z = rng.uniform(max(z_lo, 1.0), min(z_hi, 2.2))
    sign = float(rng.choice([-1.0, 1.0]))
    targets = look.copy()
    look_dirs = None  # pans aim along directions, applied after the eyes are constrained
    # Distances scale with the room: as far as the clear disc allows along the chosen direction.
    reach = max(_reach(focus, angle, center, radius), MIN_SUBJECT_DISTANCE + 0.3)
    if kind in ("orbit", "orbit_crane"):
        room = radius - float(np.linalg.norm(focus[:2] - center))
        r = float(
            np.clip(rng.uniform(2.2, 4.0), MIN_SUBJECT_DISTANCE + 0.3, max(room, MIN_SUBJECT_DISTANCE + 0.3))
        )
        sweep = sign * np.radians(rng.uniform(60, 200))
        a = angle + sweep * s
        z = np.full(frames, eye_z) if kind == "orbit" else z_lo + (min(z_hi, 3.5) - z_lo) * s
        eyes = np.concatenate([focus[:2] + r * _direction(a)[:, :2], z[:, None]], -1)
        turn = "counter-clockwise" if sign > 0 else "clockwise"
        phrase = f"orbits {abs(np.degrees(sweep)):.0f} degrees {turn} around the subject"
        phrase += " while rising" if kind == "orbit_crane" else ""
    elif kind == "pan":
        eye = np.array([*(focus[:2] + min(rng.uniform(3.0, 4.5), reach) * _direction(angle)[:2]), eye_z])
        to_subject = look[0] - eye
        yaw0 = np.arctan2(to_subject[1], to_subject[0])
        pitch = np.arctan2(to_subject[2], np.linalg.norm(to_subject[:2]))
        sweep = sign * np.radians(rng.uniform(60, 150))
        eyes = np.repeat(eye[None], frames, 0)
        look_dirs = _direction(yaw0 + sweep * s, np.full(frames, pitch))
        phrase = f"pans {abs(np.degrees(sweep)):.0f} degrees to the {'left' if sign > 0 else 'right'}"
    elif kind in ("dolly", "dolly_pan"):
        far = min(rng.uniform(4.0, 5.5), reach)
        near = max(MIN_SUBJECT_DISTANCE + 0.2, min(rng.uniform(1.8, 2.4), 0.5 * far))
        inward = kind == "dolly_pan" or rng.random() < 0.6
        d = far + (near - far) * s if inward else near + (far - near) * s
        eyes = np.concatenate(
            [focus[:2] + d[:, None] * _direction(angle)[:2], np.full((frames, 1), eye_z)], -1
        )
        phrase = "dollies in towards the subject" if inward else "dollies out away from the subject"
        if kind == "dolly_pan":
            sweep = sign * np.radians(rng.uniform(60, 100))
            yaw0 = angle + np.pi
            look_dirs = _direction(yaw0 + sweep * s, np.zeros(frames))
            side = "left" if sign > 0 else "right"
            phrase += f" while panning {abs(np.degrees(sweep)):.0f} degrees to the {side}"
    elif kind == "truck":
        base = focus[:2] + min(rng.uniform(3.0, 4.0), reach) * _direction(angle)[:2]
        lateral = _direction(angle + np.pi / 2)[:2]
        span = rng.uniform(2.0, 4.0)
        offsets = (-span / 2 + span * s)[:, None] * lateral * sign
        eyes = np.concatenate([base + offsets, np.full((frames, 1), eye_z)], -1)
        targets = np.concatenate([focus[:2] + offsets, np.full((frames, 1), focus[2])], -1)
        phrase = f"trucks {span:.0f} metres sideways past the subject"
    elif kind == "crane":
        d = min(rng.uniform(2.5, 4.0), reach)
        z = z_lo + (min(z_hi, 3.5) - z_lo) * s
        eyes = np.concatenate(
            [np.repeat((focus[:2] + d * _direction(angle)[:2])[None], frames, 0), z[:, None]], -1
        )
        phrase = "cranes up and tilts down onto the subject"
    else:
        raise ValueError(f"unknown trajectory kind {kind!r}")
    eyes = _constrain(eyes, roots, center, radius, (z_lo, z_hi))
    if look_dirs is not None:
        targets = eyes + look_dirs
    c2w = np.stack([look_at(e, t) for e, t in zip(eyes, targets)])
    rotation = max(rotation_angle(c2w[0, :3, :3], c[:3, :3]) for c in c2w)
    return Trajectory(kind, phrase, c2w, float(np.degrees(rotation)))
