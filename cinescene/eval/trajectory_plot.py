"""Requested and recovered camera trajectories drawn in top and side view, as a plain SVG.

What is drawn is what the camera metrics compare (:mod:`cinescene.eval.metrics.camera`): each trajectory made
relative to its first frame and its translations divided by its own largest translation norm, so a
recovered path that lies on the requested one scores near zero. Axes are those of the first frame's OpenCV
camera: x right, y down, z forward. The top view looks down on the x-z plane (forward up the page), the
side view on the z-y plane (forward to the right, up the page). Each camera is a dot with a short tick along
its viewing direction; the first frame is a ring.

No plotting library: the SVG is text, embedded in ``report.html`` and logged to W&B as HTML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

import numpy as np

from .metrics import camera

PANEL = 190  # px per view
MARGIN = 18
TICK = 0.12  # the viewing-direction tick, in normalised units
REQUESTED_COLOUR = "#222222"
PALETTE = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
# (horizontal axis, vertical axis) per view, as (index into xyz, sign): up the page is +vertical.
VIEWS = {"top view (x right, z forward)": ((0, 1), (2, 1)), "side view (z forward, y up)": ((2, 1), (1, -1))}


@dataclass
class Path2D:
    label: str
    colour: str
    centres: np.ndarray  # (N, 3) normalised camera centres
    forward: np.ndarray  # (N, 3) viewing directions


def normalised(c2w) -> np.ndarray:
    """The trajectory as the metrics see it: relative to its first frame, translations in a unit ball."""
    return camera.normalize_translation(camera.relative_to_first(camera.as_c2w(c2w)))


def _path(label: str, colour: str, c2w) -> Path2D:
    poses = normalised(c2w)
    return Path2D(label, colour, poses[:, :3, 3], poses[:, :3, 2])


def trajectory_paths(requested, recovered: Mapping[str, object | None]) -> list[Path2D]:
    """The requested path and each recovered one (``None``: SfM failed, nothing drawn), in legend order.

    A recovered trajectory may lack frames (NaN rows); it is drawn over its registered frames, and the
    requested one is normalised over the same frames, as the metrics do."""
    requested = camera.as_c2w(requested)
    paths = [_path("requested", REQUESTED_COLOUR, requested)]
    for k, (label, c2w) in enumerate(recovered.items()):
        if c2w is None:
            continue
        c2w = camera.as_c2w(c2w)
        registered = ~np.isnan(c2w).any(axis=(1, 2))
        if not registered[0] or registered.sum() < 2:
            continue
        paths.append(_path(label, PALETTE[k % len(PALETTE)], c2w[registered]))
        if not registered.all():  # the requested path over the same frames, as the metrics compare them
            paths[0] = _path("requested", REQUESTED_COLOUR, requested[registered])
    return paths


def _bounds(paths: list[Path2D], axes) -> tuple[np.ndarray, float]:
    """Centre and half-extent (equal on both axes) of every point and tick of a view."""
    (h, hs), (v, vs) = axes
    points = []
    for p in paths:
        for pts in (p.centres, p.centres + TICK * p.forward):
            points.append(np.stack([pts[:, h] * hs, pts[:, v] * vs], -1))
    points = np.concatenate(points)
    low, high = points.min(0), points.max(0)
    return (low + high) / 2, max(float((high - low).max()) / 2, 0.05)


def _panel(paths: list[Path2D], title: str, axes, x0: float) -> list[str]:
    (h, hs), (v, vs) = axes
    centre, half = _bounds(paths, axes)
    inner = PANEL - 2 * MARGIN
    scale = inner / (2 * half * 1.08)

    def xy(point) -> tuple[float, float]:
        u = (point[h] * hs - centre[0]) * scale + x0 + PANEL / 2
        w = PANEL / 2 + MARGIN / 2 - (point[v] * vs - centre[1]) * scale
        return round(u, 2), round(w, 2)

    out = [
        f'<rect x="{x0 + 1}" y="1" width="{PANEL - 2}" height="{PANEL - 2}" fill="#fafafa" '
        'stroke="#cccccc"/>',
        f'<text x="{x0 + PANEL / 2}" y="13" text-anchor="middle" font-size="10" '
        f'fill="#444">{escape(title)}</text>',
    ]
    for p in paths:
        points = [xy(c) for c in p.centres]
        line = " ".join(f"{a},{b}" for a, b in points)
        out.append(f'<polyline points="{line}" fill="none" stroke="{p.colour}" stroke-width="1.5"/>')
        for (a, b), c, f in zip(points, p.centres, p.forward):
            ta, tb = xy(c + TICK * f)
            out.append(f'<line x1="{a}" y1="{b}" x2="{ta}" y2="{tb}" stroke="{p.colour}" stroke-width="1"/>')
            out.append(f'<circle cx="{a}" cy="{b}" r="2" fill="{p.colour}"/>')
        a, b = points[0]
        out.append(f'<circle cx="{a}" cy="{b}" r="4.5" fill="none" stroke="{p.colour}" stroke-width="1.2"/>')
    return out


def trajectory_svg(requested, recovered: Mapping[str, object | None] | None = None, notes=()) -> str:
    """An SVG (text) of the requested trajectory and the recovered ones (``label -> c2w``; ``None`` draws
    nothing) in top and side view, a legend, and ``notes`` (e.g. why SfM failed) one per line under it."""
    paths = trajectory_paths(requested, recovered or {})
    width = PANEL * len(VIEWS) + 8
    body = []
    for k, (title, axes) in enumerate(VIEWS.items()):
        body += _panel(paths, title, axes, k * (PANEL + 8))
    x, y = 4, PANEL + 14
    for p in paths:
        span = 26 + 6 * len(p.label)
        if x > 4 and x + span > width:
            x, y = 4, y + 14
        body.append(
            f'<line x1="{x}" y1="{y - 4}" x2="{x + 14}" y2="{y - 4}" stroke="{p.colour}" stroke-width="2"/>'
        )
        body.append(f'<text x="{x + 18}" y="{y}" font-size="10" fill="#222">{escape(p.label)}</text>')
        x += span
    for note in notes:
        y += 14
        body.append(f'<text x="4" y="{y}" font-size="10" fill="#a00">{escape(note)}</text>')
    height = y + 6
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">' + "".join(body) + "</svg>"
    )


def sample_trajectory_svg(records: Mapping[str, dict]) -> str | None:
    """One held-out sample's plot from its evaluation records (``samples/<key>.json``), one per model
    (``label -> record``): the requested cameras, each model's recovered ones; None without cameras."""
    requested = next((r["cameras"] for r in records.values() if r.get("cameras")), None)
    if requested is None:
        return None
    recovered, notes = {}, []
    for label, record in records.items():
        sfm = record.get("sfm")
        if sfm is None:
            continue
        if sfm.get("recovered") and not sfm.get("failure"):
            recovered[label] = camera.poses_from_json(sfm["recovered"])
        else:
            recovered[label] = None
            notes.append(f"{label}: SfM failed ({sfm.get('failure') or 'no usable reconstruction'})")
    return trajectory_svg(camera.poses_from_json(requested), recovered, notes)


__all__ = ["normalised", "sample_trajectory_svg", "trajectory_paths", "trajectory_svg"]
