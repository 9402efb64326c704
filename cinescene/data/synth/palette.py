"""Per-scene colour palettes and plain-English colour names for the prompts."""

from __future__ import annotations

import colorsys

import numpy as np

# Hue bins (degrees, upper bound) -> name, for saturated colours.
_HUE_NAMES = [
    (15, "red"),
    (40, "orange"),
    (65, "yellow"),
    (160, "green"),
    (195, "teal"),
    (255, "blue"),
    (290, "purple"),
    (335, "pink"),
    (360, "red"),
]


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def colour_name(rgb) -> str:
    """A plain name a prompt can use: 'red', 'dark blue', 'white', 'beige' ..."""
    h, s, v = colorsys.rgb_to_hsv(*[float(x) for x in rgb])
    if v < 0.18:
        return "black"
    if s < 0.15:
        return "white" if v > 0.8 else ("grey" if v > 0.4 else "dark grey")
    hue = h * 360.0
    if 15 <= hue < 50 and s < 0.55:
        return "beige" if v > 0.6 else "brown"
    if 15 <= hue < 40 and v < 0.6:
        return "brown"
    name = next(n for bound, n in _HUE_NAMES if hue < bound)
    return f"dark {name}" if v < 0.45 else name


class Palette:
    """A scene's colours: a base hue with an analogous and a complementary accent."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.base = rng.random()
        self.accent = (self.base + rng.choice([0.08, 0.5, 0.58])) % 1.0

    def colour(self, role: str) -> np.ndarray:
        r = self.rng
        if role == "wall":
            return hsv(self.base + r.uniform(-0.04, 0.04), r.uniform(0.15, 0.55), r.uniform(0.6, 0.9))
        if role == "floor":
            return hsv(self.base + r.uniform(0.0, 0.12), r.uniform(0.25, 0.6), r.uniform(0.35, 0.7))
        if role == "accent":
            return hsv(self.accent + r.uniform(-0.03, 0.03), r.uniform(0.55, 0.9), r.uniform(0.55, 0.95))
        if role == "dark":
            return hsv(self.base + r.uniform(-0.1, 0.1), r.uniform(0.3, 0.7), r.uniform(0.15, 0.35))
        if role == "light":
            return hsv(self.base, r.uniform(0.0, 0.12), r.uniform(0.85, 0.97))
        if role == "any":
            return hsv(r.random(), r.uniform(0.4, 0.9), r.uniform(0.45, 0.95))
        raise ValueError(role)


def a_or_an(phrase: str) -> str:
    """'a red shirt', 'an orange shirt'."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def shade_of(rgb: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(np.asarray(rgb) * factor, 0.0, 1.0)
