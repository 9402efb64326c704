"""What `cinescene eval` writes: per-sample records, metrics.json, table.md, report.html, the contact sheet.

``metrics.json``::

    {"checkpoint": ..., "step": ..., "weights": "trained"|"ema", "data": ..., "settings": {...},
     "metrics": ["mat_pix", ...],                  # what was asked for, in table order
     "mean": {"psnr": 14.2, "clip_v": null, ...},  # over the samples that have a value
     "count": {"psnr": 8, ...},                     # how many samples the mean is over
     "absent": {"clip_v": "eval.clip.weights is not set ..."},
     "sfm_failures": 3, "sfm_attempts": 8,
     "unreadable": {"clip_000007": "sample clip_000007 in shard-...tar is unreadable: ..."},
     "samples": [{"key", "prompt", "video", "metrics": {...}, "per_frame": {...}, "missing": {...},
                  "sfm": {"frames", "registered", "failure", "trials"}}, ...]}

JSON has no infinity: ``inf`` (PSNR of identical frames) is written as the
string ``"inf"``; an absent value is ``null``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cinescene.durable import write_atomic
from cinescene.eval.metrics.registry import REGISTRY
from cinescene.sampling.video import strip_indices
from cinescene.secrets import scrub

# The paper's table (its own evaluation set and matcher): for scale, not for comparison of figures.
PAPER = {
    "mat_pix": 4617.51,
    "clip_v": 0.8633,
    "psnr": 14.51,
    "ssim": 0.4133,
    "rot_err": 2.68,
    "trans_err": 5.15,
    "cam_mc": 6.88,
    "clip_t": 0.3212,
}
SHEET_FRAMES = 6


def json_number(value: float | None):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def number(value) -> float | None:
    """The inverse of :func:`json_number`."""
    if isinstance(value, str):
        return float(value)
    return None if value is None else float(value)


def aggregate(records: Sequence[dict], names: Sequence[str]) -> dict[str, dict]:
    """{"mean": {name: value}, "count": {name: n}} over the samples that have a value."""
    mean, count = {}, {}
    for name in names:
        values = np.array([v for v in (number(r["metrics"].get(name)) for r in records) if v is not None])
        count[name] = int(values.size)
        if values.size == 0:
            mean[name] = None
        elif np.isposinf(values).any():
            mean[name] = float("inf")
        else:
            mean[name] = float(values.mean())
    return {"mean": mean, "count": count}


def format_metric(value: float | None, name: str) -> str:
    """A metric's value as the tables print it ("–" when absent)."""
    value = number(value)
    if value is None:
        return "–"
    if math.isinf(value):
        return "inf"
    return (
        f"{value:.2f}"
        if name in ("mat_pix", "psnr", "bg_psnr", "rot_err", "trans_err", "cam_mc")
        else f"{value:.4f}"
    )


def metric_title(name: str) -> str:
    """The column title: the metric's name and which way is better."""
    metric = REGISTRY[name]
    return f"{metric.title} {'↑' if metric.higher_is_better else '↓'}"


def table(summary: dict, label: str) -> str:
    """table.md: the paper's columns (and ours after them), the paper's row for scale, then this
    evaluation."""
    names = summary["metrics"]
    lines = [
        "| | " + " | ".join(metric_title(n) for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
        "| CineScene (paper) | " + " | ".join(format_metric(PAPER.get(n), n) for n in names) + " |",
        f"| {label} | " + " | ".join(format_metric(summary["mean"][n], n) for n in names) + " |",
        "",
    ]
    notes = [
        f"{len(summary['samples'])} held-out samples of {summary['data']}, {summary['settings']['steps']} "
        f"steps, guidance {summary['settings']['cfg']}, seed {summary['settings']['seed']}; "
        f"{summary['weights']} weights of {summary['checkpoint']} (step {summary['step']})."
    ]
    if any(REGISTRY[n].group == "camera" for n in names):
        notes.append(
            f"Camera metrics: SfM failed on {summary['sfm_failures']} of {summary['sfm_attempts']} "
            "samples (counted, not averaged); sums over the registered frames, as CamI2V."
        )
    if summary.get("unreadable"):
        notes.append(
            f"{len(summary['unreadable'])} selected samples were unreadable and are left out: "
            f"{', '.join(sorted(summary['unreadable']))}."
        )
    reasons: dict[str, list[str]] = {}
    for name, why in summary["absent"].items():
        reasons.setdefault(why, []).append(REGISTRY[name].title)
    for why, titles in reasons.items():
        notes.append(f"{', '.join(titles)} absent: {why}.")
    thin = [
        n
        for n in names
        if n not in summary["absent"]
        and REGISTRY[n].group != "camera"
        and summary["count"][n] < len(summary["samples"])
    ]
    if thin:
        notes.append(
            "Means over fewer samples: "
            + ", ".join(f"{REGISTRY[n].title} {summary['count'][n]}" for n in thin)
            + "."
        )
    notes.append(
        "The paper's figures come from its own test set, GIM matching and VBench; docs/EVAL.md says how "
        "ours differ."
    )
    return "\n".join(lines + notes) + "\n"


def background_error(generated: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3): |generated - background| on background pixels (black = exact, white = 64+ levels
    off), the subject's pixels (where the metric does not look) dark blue."""
    error = np.abs(generated.astype(np.int16) - background.astype(np.int16)).mean(-1)
    grey = np.clip(error * 4, 0, 255).astype(np.uint8)
    out = np.repeat(grey[..., None], 3, axis=-1)
    out[~mask] = (20, 30, 90)
    return out


def _label(text: str, height: int, width: int) -> np.ndarray:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(image).text((3, max(0, height // 2 - 5)), text, fill=(0, 0, 0))
    return np.asarray(image)


def contact_row(key: str, rows: dict[str, np.ndarray | None], frames: int = SHEET_FRAMES) -> np.ndarray:
    """One sample's block: a title line, then one labelled line of evenly spaced frames per entry of
    ``rows``."""
    present = {name: video for name, video in rows.items() if video is not None}
    height, width = next(iter(present.values())).shape[1:3]
    count = len(next(iter(present.values())))
    picks = strip_indices(count, frames)
    label_w, gap = 104, 2
    total_w = label_w + len(picks) * (width + gap)
    lines = [_label(key, 14, total_w)]
    for name, video in rows.items():
        line = np.full((height, total_w, 3), 255, np.uint8)
        line[:, :label_w] = _label(name, height, label_w)
        if video is None:
            line[:, label_w:] = _label("(not in the data)", height, total_w - label_w)
        else:
            for k, i in enumerate(picks):
                x = label_w + k * (width + gap)
                line[:, x : x + width] = video[min(i, len(video) - 1)]
        lines += [line, np.full((gap, total_w, 3), 255, np.uint8)]
    return np.concatenate(lines)


def side_by_side(videos: dict[str, np.ndarray], gap: int = 2) -> np.ndarray:
    """uint8 (F, 14 + H, ...): equally sized videos next to each other, each under a line with its name."""
    count = min(len(v) for v in videos.values())
    height, width = next(iter(videos.values())).shape[1:3]
    label_h = 14
    canvas = np.full((count, label_h + height, len(videos) * (width + gap) - gap, 3), 255, np.uint8)
    for k, (name, video) in enumerate(videos.items()):
        x = k * (width + gap)
        canvas[:, :label_h, x : x + width] = _label(name, label_h, width)
        canvas[:, label_h:, x : x + width] = video[:count]
    return canvas


def contact_sheet(blocks: list[np.ndarray], path: str | Path) -> None:
    width = max(b.shape[1] for b in blocks)
    padded = [np.pad(b, ((0, 6), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks]
    Image.fromarray(np.concatenate(padded)).save(path)


def write_report(
    out: Path, keys: Sequence[str], names: Sequence[str], header: dict, absent: dict[str, str], label: str
) -> dict:
    """Gather the per-sample records of ``keys`` in ``out`` into ``metrics.json``, ``table.md``,
    ``report.html`` and (from the blocks that exist) ``contact_sheet.png``; returns what ``metrics.json``
    holds.

    ``header``: the evaluation's description (checkpoint, step, weights, data, settings), written first;
    ``absent``: metrics that could not run at all, and why; ``label``: this evaluation's row in the table."""
    everything = [json.loads((out / "samples" / f"{key}.json").read_text()) for key in keys]
    records = [r for r in everything if "unreadable" not in r]
    unreadable = {r["key"]: r["unreadable"] for r in everything if "unreadable" in r}
    summary = aggregate(records, names)
    sfm = [r["sfm"] for r in records if "sfm" in r]
    data = {
        **header,
        "settings": {**header.get("settings", {}), "num_samples": len(records)},
        "metrics": list(names),
        "mean": {k: json_number(v) for k, v in summary["mean"].items()},
        "count": summary["count"],
        "absent": dict(absent),
        "sfm_failures": sum(1 for s in sfm if s["failure"]),
        "sfm_attempts": len(sfm),
        "unreadable": unreadable,
        "samples": records,
    }
    data = scrub(data)
    write_atomic(out / "metrics.json", json.dumps(data, indent=1) + "\n")
    write_atomic(out / "table.md", table(data, label))
    blocks = [out / "contact" / f"{r['key']}.png" for r in records]
    blocks = [np.asarray(Image.open(b).convert("RGB")) for b in blocks if b.is_file()]
    if blocks:
        contact_sheet(blocks, out / "contact_sheet.png")
    from .html_report import write_eval_report

    write_eval_report(out, data, label)
    return data
