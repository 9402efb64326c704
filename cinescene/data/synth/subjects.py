"""Moving subjects built from capsules and spheres: a person, a dog or a horse, with a named motion.

A subject is posed analytically at any time ``t``: a gait drives joint angles
(hip swing, knee flex, arm swing, body bob and lean), the pose is built in
the body frame (x forward, y left, z up), grounded so the lowest foot touches
the floor, and placed along a path through the scene's clear area. Motions:

* person: walking, running, jumping, turning, waving
* dog: walking, running, jumping
* horse (outdoors only): walking, running
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .materials import MaterialTable
from .palette import a_or_an, colour_name, hsv
from .primitives import Capsules, Ellipsoids

MOTIONS = {
    "person": ["walking", "running", "jumping", "turning", "waving"],
    "dog": ["walking", "running", "jumping"],
    "horse": ["walking", "running"],
}
# freq (Hz), leg swing (rad), knee flex, arm swing, elbow flex, lean, bob (x height), speed (m/s)
GAITS: dict[str, tuple[float, ...]] = {
    "walking": (0.9, 0.45, 0.6, 0.4, 0.25, 0.03, 0.015, 1.2),
    "running": (1.6, 0.8, 1.3, 0.8, 1.5, 0.2, 0.04, 3.0),
    "jumping": (1.2, 0.15, 0.9, 0.0, 0.3, 0.0, 0.0, 0.6),
    "turning": (0.8, 0.25, 0.4, 0.25, 0.25, 0.0, 0.01, 0.2),
    "waving": (1.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
}
PHRASES = {
    "walking": "walking",
    "running": "running",
    "jumping": "jumping up and down",
    "turning": "turning around on the spot",
    "waving": "waving",
}

Pose = tuple[list[tuple], list[tuple]]  # capsules (a, b, r, mat), spheres (center, radii, mat)


@dataclass
class Subject:
    kind: str
    motion: str
    description: str
    height: float
    times: np.ndarray  # (F,) seconds
    roots: np.ndarray  # (F, 3) ground point under the body
    headings: np.ndarray  # (F,) yaw of the body's forward axis
    poses: list[Pose]  # world-space shapes per frame

    def groups(self, frame: int) -> list:
        capsules, spheres = self.poses[frame]
        groups = []
        if capsules:
            a, b, r, m = zip(*capsules)
            groups.append(Capsules(a, b, r, m))
        if spheres:
            c, r, m = zip(*spheres)
            groups.append(Ellipsoids(c, r, m))
        return groups

    def look_points(self) -> np.ndarray:
        """Where a camera framing the subject aims: a little above mid height."""
        return self.roots + np.array([0.0, 0.0, 0.55 * self.height])

    def head_centers(self) -> np.ndarray:
        """(F, 3) centre of the head per frame: a 3D point the renderer draws (projection tests)."""
        return np.array([pose[1][0][0] for pose in self.poses])


def _limb(origin, angle, length, side_angle=0.0):
    """End of a limb of ``length`` from ``origin`` swung by ``angle`` forward (and sideways) from hanging."""
    direction = np.array(
        [np.sin(angle) * np.cos(side_angle), np.sin(side_angle), -np.cos(angle) * np.cos(side_angle)]
    )
    return np.asarray(origin) + length * direction


def _person_pose(t: float, motion: str, h: float, mats: dict[str, int]) -> Pose:
    freq, leg_amp, knee_amp, arm_amp, elbow, lean, bob, _ = GAITS[motion]
    phase = 2 * np.pi * freq * t
    thigh = shin = 0.245 * h
    upper, fore, torso, head_r = 0.17 * h, 0.16 * h, 0.29 * h, 0.065 * h
    legs = []
    jump = 0.0
    for side, offset in ((1, 0.0), (-1, np.pi)):
        ph = phase + offset
        if motion == "jumping":
            crouch = 0.9 * max(0.0, -np.sin(phase))
            hip, knee = 0.5 * crouch, crouch
        else:
            hip, knee = leg_amp * np.sin(ph), knee_amp * max(0.0, np.cos(ph))
        legs.append((side, hip, knee))
    if motion == "jumping":
        jump = 0.25 * h * max(0.0, np.sin(phase))
    # Ground the body: the lower foot rests on the floor.
    reach = max(thigh * np.cos(a) + shin * np.cos(a - k) for _, a, k in legs)
    pelvis = np.array([0.0, 0.0, reach + 0.035 * h + jump + bob * h * abs(np.cos(phase))])
    neck = pelvis + torso * np.array([np.sin(lean), 0.0, np.cos(lean)])
    capsules, spheres = [], []
    spheres.append(
        (neck + 1.35 * head_r * np.array([np.sin(lean), 0, np.cos(lean)]), (head_r,) * 3, mats["skin"])
    )
    spheres.append(
        (
            neck + 1.55 * head_r * np.array([np.sin(lean) - 0.25, 0, np.cos(lean)]),
            (head_r * 0.95, head_r * 0.95, head_r * 0.8),
            mats["hair"],
        )
    )
    capsules.append((pelvis + [0, 0, 0.04 * h], neck - [0, 0, 0.02 * h], 0.085 * h, mats["shirt"]))
    for side, hip_angle, knee in legs:
        hip = pelvis + [0.0, side * 0.06 * h, 0.0]
        knee_point = _limb(hip, hip_angle, thigh)
        foot = _limb(knee_point, hip_angle - knee, shin)
        capsules.append((hip, knee_point, 0.04 * h, mats["trousers"]))
        capsules.append((knee_point, foot, 0.035 * h, mats["trousers"]))
    for side, offset in ((1, np.pi), (-1, 0.0)):
        shoulder = neck + [0.0, side * 0.13 * h, -0.04 * h]
        if motion == "waving" and side == -1:
            wave = 0.45 * np.sin(2 * np.pi * freq * t)
            elbow_point = shoulder + upper * np.array([0.0, -np.sin(2.3), -np.cos(2.3)])
            hand = elbow_point + fore * np.array([0.0, -np.sin(2.9 + wave), -np.cos(2.9 + wave)])
        elif motion == "jumping":
            raise_angle = 2.5 * max(0.0, np.sin(phase))
            elbow_point = _limb(shoulder, raise_angle, upper, side * 0.2)
            hand = _limb(elbow_point, raise_angle + elbow, fore, side * 0.2)
        else:
            swing = arm_amp * np.sin(phase + offset)
            elbow_point = _limb(shoulder, swing, upper, side * 0.08)
            hand = _limb(elbow_point, swing + elbow, fore, side * 0.08)
        capsules.append((shoulder, elbow_point, 0.03 * h, mats["shirt"]))
        capsules.append((elbow_point, hand, 0.026 * h, mats["skin"]))
    return capsules, spheres


def _quadruped_pose(t: float, motion: str, size: float, kind: str, mats: dict[str, int]) -> Pose:
    """A four-legged animal; ``size`` is its shoulder height."""
    freq, leg_amp, knee_amp = GAITS[motion][:3]
    freq *= 1.2 if kind == "dog" else 0.8
    phase = 2 * np.pi * freq * t
    length = (1.1 if kind == "dog" else 1.45) * size
    body_r = 0.2 * size
    upper = lower = 0.33 * size
    # Trot: diagonal pairs together; run (gallop): front pair, then back pair.
    offsets = {
        "walking": (0, np.pi, np.pi, 0),
        "running": (0, 0.4, np.pi, np.pi + 0.4),
        "jumping": (0, 0, 0, 0),
    }[motion]
    legs = []
    for (fx, side), offset in zip(((1, 1), (1, -1), (-1, 1), (-1, -1)), offsets):
        ph = phase + offset
        if motion == "jumping":
            tuck = 0.9 * max(0.0, np.sin(phase))
            swing, knee = fx * tuck, 0.6 * tuck
        else:
            swing, knee = leg_amp * np.sin(ph), knee_amp * max(0.0, np.cos(ph)) * 0.7
        legs.append((fx, side, swing, knee))
    reach = max(upper * np.cos(s) + lower * np.cos(s - k) for _, _, s, k in legs)
    jump = 0.5 * size * max(0.0, np.sin(phase)) if motion == "jumping" else 0.0
    z = reach + 0.05 * size + jump + (0.04 * size * abs(np.sin(phase)) if motion == "running" else 0.0)
    body_front, body_back = np.array([length / 2, 0.0, z]), np.array([-length / 2, 0.0, z])
    capsules = [(body_back, body_front, body_r, mats["fur"])]
    for fx, side, swing, knee in legs:
        top = np.array([fx * length * 0.42, side * body_r * 0.55, z - body_r * 0.3])
        knee_point = _limb(top, swing, upper)
        foot = _limb(knee_point, swing - fx * knee, lower)
        capsules.append((top, knee_point, 0.07 * size, mats["fur"]))
        capsules.append((knee_point, foot, 0.05 * size, mats["legs"]))
    neck_len = (0.45 if kind == "dog" else 0.65) * size
    neck_top = body_front + neck_len * np.array([0.6, 0.0, 0.8]) + [0, 0, 0.03 * size * np.sin(phase)]
    capsules.append((body_front, neck_top, 0.1 * size, mats["fur"]))
    head_r = (0.16 if kind == "dog" else 0.13) * size
    snout = neck_top + (0.22 if kind == "dog" else 0.35) * size * np.array([0.9, 0.0, -0.45])
    capsules.append((neck_top, snout, head_r * 0.55, mats["fur"]))
    spheres = [(neck_top, (head_r,) * 3, mats["fur"])]
    wag = 0.6 * np.sin(2 * np.pi * 2.5 * t) if kind == "dog" else 0.15 * np.sin(phase)
    tail_end = body_back + 0.4 * size * np.array([-0.6, np.sin(wag), 0.55 if kind == "dog" else -0.6])
    capsules.append((body_back, tail_end, 0.04 * size, mats["legs"]))
    if kind == "dog":
        for side in (1, -1):
            ear = neck_top + [-0.02 * size, side * 0.09 * size, 0.0]
            capsules.append((ear, ear + [0.0, side * 0.03 * size, 0.14 * size], 0.035 * size, mats["legs"]))
    return capsules, spheres


def _to_world(pose: Pose, root: np.ndarray, heading: float) -> Pose:
    c, s = np.cos(heading), np.sin(heading)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def place(p):
        return tuple(rot @ np.asarray(p, dtype=np.float64) + root)

    capsules = [(place(a), place(b), r, m) for a, b, r, m in pose[0]]
    spheres = [(place(ctr), radii, m) for ctr, radii, m in pose[1]]
    return capsules, spheres


def _path(rng, motion: str, speed: float, times: np.ndarray, center: np.ndarray, radius: float):
    """Ground positions (F, 3) and headings (F,) inside a disc; straight when it fits, else a circle."""
    duration = float(times[-1]) if len(times) > 1 else 0.0
    heading0 = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(heading0), np.sin(heading0)])
    length = speed * duration
    if motion == "turning":
        spin = rng.choice([-1, 1]) * rng.uniform(np.pi / 2, np.pi) / max(duration, 1e-6)
        headings = heading0 + spin * times
        xy = center + rng.uniform(-0.3, 0.3, 2) * radius + np.outer(times, direction) * speed * 0.3
    elif length <= 1.6 * radius:
        start = center - direction * length / 2 + rng.uniform(-0.25, 0.25, 2) * radius
        xy = start + np.outer(times * speed, direction)
        headings = np.full(len(times), heading0)
    else:
        r = 0.75 * radius
        sign = rng.choice([-1, 1])
        angles = heading0 + sign * speed * times / r
        xy = center + r * np.stack([np.cos(angles), np.sin(angles)], -1)
        headings = angles + sign * np.pi / 2
    return np.concatenate([xy, np.zeros((len(times), 1))], -1), headings


def build_subject(
    rng: np.random.Generator,
    mats: MaterialTable,
    times: np.ndarray,
    center: np.ndarray,
    radius: float,
    outdoors: bool,
) -> Subject:
    kinds = ["person", "person", "dog"] + (["horse"] if outdoors else [])
    kind = str(rng.choice(kinds))
    motion = str(rng.choice(MOTIONS[kind]))
    if kind == "person":
        shirt, trousers = (
            hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.95)),
            hsv(rng.random(), rng.uniform(0.2, 0.7), rng.uniform(0.15, 0.6)),
        )
        skin = hsv(rng.uniform(0.04, 0.09), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
        hair = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.6))
        ids = {
            "shirt": mats.add("flat", shirt),
            "trousers": mats.add("flat", trousers),
            "skin": mats.add("flat", skin),
            "hair": mats.add("flat", hair),
        }
        height = rng.uniform(1.55, 1.9)
        description = f"a person in {a_or_an(colour_name(shirt))} shirt and {colour_name(trousers)} trousers"

        def pose(t):
            return _person_pose(t, motion, height, ids)
    else:
        coat_name, coat = [
            ("brown", hsv(0.07, 0.65, 0.45)),
            ("black", hsv(0.0, 0.0, 0.12)),
            ("white", hsv(0.1, 0.05, 0.92)),
            ("golden", hsv(0.11, 0.65, 0.85)),
            ("grey", hsv(0.0, 0.0, 0.55)),
        ][int(rng.integers(5))]
        ids = {"fur": mats.add("flat", coat), "legs": mats.add("flat", coat * 0.75)}
        height = rng.uniform(0.45, 0.65) if kind == "dog" else rng.uniform(1.4, 1.65)
        description = f"a {coat_name} {kind}"

        def pose(t):
            return _quadruped_pose(t, motion, height, kind, ids)

    speed = GAITS[motion][-1] * (1.0 if kind == "person" else (1.1 if kind == "dog" else 1.6))
    roots, headings = _path(rng, motion, speed, times, center, radius)
    poses = [_to_world(pose(float(t)), roots[i], float(headings[i])) for i, t in enumerate(times)]
    full_height = height if kind == "person" else height * 1.3
    return Subject(kind, motion, description, full_height, times, roots, headings, poses)
