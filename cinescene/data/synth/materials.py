"""Procedural materials: flat, checker, stripes, value noise and bricks, with distance filtering.

Textures are evaluated at the world hit point in the two coordinates of the
surface's dominant plane (floor: x, y; walls: the horizontal axis and z), so a
wall's stripes stay put as the camera moves. At 64x64 pixels a fine checker
aliases into noise, so every pattern fades to its mean colour once a pixel's
footprint approaches half its period (a cheap box filter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

FLAT, CHECKER, STRIPES_U, STRIPES_V, NOISE, BRICKS = range(6)
KIND_NAMES = {
    "flat": FLAT,
    "checker": CHECKER,
    "stripes_u": STRIPES_U,
    "stripes_v": STRIPES_V,
    "noise": NOISE,
    "bricks": BRICKS,
}


@dataclass
class MaterialTable:
    """Materials of one scene (and its subject); ``add`` returns the id shapes refer to."""

    kinds: list[int] = field(default_factory=list)
    color_a: list[Sequence[float]] = field(default_factory=list)
    color_b: list[Sequence[float]] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)

    def add(self, kind: str, a, b=None, scale: float = 1.0) -> int:
        self.kinds.append(KIND_NAMES[kind])
        self.color_a.append(tuple(float(x) for x in a))
        self.color_b.append(tuple(float(x) for x in (a if b is None else b)))
        self.scales.append(float(scale))
        return len(self.kinds) - 1

    def arrays(self):
        return (
            np.asarray(self.kinds, dtype=np.int64),
            np.asarray(self.color_a),
            np.asarray(self.color_b),
            np.asarray(self.scales),
        )


def _hash2(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point."""
    x = np.sin(i * 127.1 + j * 311.7) * 43758.5453
    return x - np.floor(x)


def value_noise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1): two octaves of bilinearly blended lattice values."""
    total = np.zeros_like(u)
    for octave, weight in ((1.0, 0.65), (2.7, 0.35)):
        x, y = u * octave, v * octave
        i, j = np.floor(x), np.floor(y)
        fx, fy = x - i, y - j
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        a, b = _hash2(i, j), _hash2(i + 1, j)
        c, d = _hash2(i, j + 1), _hash2(i + 1, j + 1)
        total += weight * ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy)
    return total


def surface_coords(points: np.ndarray, normals: np.ndarray):
    """(u, v) in the dominant plane of each normal; v is vertical on walls."""
    axis = np.argmax(np.abs(normals), axis=-1)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    u = np.where(axis == 0, y, x)
    v = np.where(axis == 2, y, z)
    return u, v


def shade_albedo(
    table: MaterialTable, material: np.ndarray, points: np.ndarray, normals: np.ndarray, footprint: np.ndarray
) -> np.ndarray:
    """Albedo (N, 3) in [0, 1] for hits with material ids ``material`` (all >= 0)."""
    kinds, ca, cb, scales = table.arrays()
    kind, a, b, s = kinds[material], ca[material], cb[material], scales[material]
    u, v = surface_coords(points, normals)
    us, vs = u / s, v / s
    pattern = np.zeros(len(material))  # weight of colour b
    checker = (np.floor(us) + np.floor(vs)) % 2
    stripes_u = (us - np.floor(us)) < 0.5
    stripes_v = (vs - np.floor(vs)) < 0.5
    row = np.floor(vs * 2.0)
    bu = us + 0.5 * (row % 2)
    mortar = ((vs * 2.0 - row) < 0.12) | ((bu - np.floor(bu)) < 0.06)
    pattern = np.where(kind == CHECKER, checker, pattern)
    pattern = np.where(kind == STRIPES_U, stripes_u, pattern)
    pattern = np.where(kind == STRIPES_V, stripes_v, pattern)
    pattern = np.where(kind == BRICKS, mortar, pattern)
    noise_kind = kind == NOISE
    if noise_kind.any():
        pattern = np.where(noise_kind, value_noise(us * 3.0, vs * 3.0), pattern)
    mean_weight = np.select([kind == BRICKS, kind == FLAT], [0.2, 0.0], 0.5)
    # Fade the pattern towards its mean once a pixel covers a good part of a period.
    contrast = np.clip(1.5 - 3.0 * footprint / s, 0.0, 1.0)
    weight = mean_weight + (pattern - mean_weight) * contrast
    return a * (1.0 - weight[:, None]) + b * weight[:, None]
