"""`cinescene data inspect`: what a shard directory holds, and a contact sheet of one sample.

The contact sheet shows the prompt, the scene images, frames with and
without the subject (pixel shards; latent shards show three latent channels
as false colour) and a top-down plot of the trajectory: camera positions from
start (blue) to end (red) with their viewing directions, the scene images'
cameras as grey rays from the panorama centre, and the subject's path when
the sample carries it (synthetic clips).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cinescene.errors import CineSceneError

from .manifest import Manifest, load_manifest
from .samples import check_sample
from .shards import SampleError, ShardReader, file_sha256, npy_field

THUMB = 128
SHOWN_BAD_SAMPLES = 10  # the text summary lists this many unreadable samples; --json lists all
SHEET_SCENE_IMAGES = 8  # the contact sheet's first row shows at most this many stored scene images
PLOT = 320
LEGEND = 48
PAD = 8
BG, FG, GREY = (24, 24, 28), (235, 235, 235), (150, 150, 150)


def unreadable_samples(manifest: Manifest) -> list[dict]:
    """Every sample the loader could not use, or with any other damaged member: shard, key, reason.

    Each sample is read by its byte range (CRC checked) and every array member
    is parsed against the manifest's shape and dtype (:func:`check_sample`).
    """
    reader, found = ShardReader(), []
    try:
        for ref in manifest.samples():
            try:
                check_sample(reader.read(ref.shard, ref.key, ref.offset, ref.length, ref.crc), manifest)
            except SampleError as exc:
                found.append({"shard": ref.shard.name, "key": ref.key, "reason": str(exc)})
    finally:
        reader.close()
    return found


def summarize(shards, verify: bool = False) -> dict:
    """Counts, shapes, encoder and shard health; with
    ``verify`` also every shard's sha256 and every sample."""
    manifest = load_manifest(shards)
    data = manifest.data
    shard_rows = []
    for shard, file in zip(data["shards"], manifest.shard_files()):
        status = file.status
        if verify and status == "ok" and file_sha256(file.path) != shard["sha256"]:
            status = "checksum mismatch"
        shard_rows.append(
            {
                "name": shard["name"],
                "samples": shard["num_samples"],
                "bytes": shard["bytes"],
                "status": status,
            }
        )
    fields = {
        name: {"shape": d["shape"], "dtype": d["dtype"], "samples": d["count"]}
        for name, d in sorted(data["fields"].items())
    }
    return {
        "path": str(manifest.root),
        "num_samples": manifest.num_samples,
        "num_shards": len(shard_rows),
        "bytes": sum(s["bytes"] for s in shard_rows),
        "encoder": data["encoder"],
        "frames": data["frames"],
        "latent_frames": data["latent_frames"],
        "size": data["size"],
        "scene_images": data["scene_images"],
        "scene_size": data["scene_size"],
        "fields": fields,
        "shards": shard_rows,
        "damaged_shards": sum(s["status"] != "ok" for s in shard_rows),
        "skipped_clips": len(data.get("skipped_clips") or []),
        **({"unreadable_samples": unreadable_samples(manifest)} if verify else {}),
    }


def damaged(summary: dict) -> bool:
    """Anything `data inspect --verify` exits 1 for: a damaged shard or an unreadable sample."""
    return bool(summary["damaged_shards"] or summary.get("unreadable_samples"))


def format_summary(summary: dict) -> str:
    enc = summary["encoder"]
    lines = [
        f"{summary['path']}: {summary['num_samples']} samples in {summary['num_shards']} shards "
        f"({summary['bytes'] / 2**20:.1f} MiB), encoder {enc['name']}",
        f"clips: {summary['frames']} frames -> {summary['latent_frames']} latent frames at "
        f"{summary['size'][0]}x{summary['size'][1]}; {summary['scene_images']} scene images stored per "
        f"sample at {summary['scene_size'][0]}x{summary['scene_size'][1]}",
    ]
    for name, d in summary["fields"].items():
        lines.append(f"  {name:22s} {d['dtype']:8s} {str(tuple(d['shape'])):22s} in {d['samples']} samples")
    if summary["skipped_clips"]:
        lines.append(f"damaged clips skipped when prepared: {summary['skipped_clips']} (in manifest.json)")
    if summary["damaged_shards"]:
        bad = [f"{s['name']} ({s['status']})" for s in summary["shards"] if s["status"] != "ok"]
        lines.append(f"damaged shards: {', '.join(bad)}")
    if "unreadable_samples" in summary:
        bad = summary["unreadable_samples"]
        lines.append(
            f"unreadable samples: {len(bad)} of {summary['num_samples']}"
            + (" (the loader skips them and counts them in data/skipped)" if bad else "")
        )
        lines += [f"  {s['shard']}: {s['key']}: {s['reason']}" for s in bad[:SHOWN_BAD_SAMPLES]]
        if len(bad) > SHOWN_BAD_SAMPLES:
            lines.append(f"  ... and {len(bad) - SHOWN_BAD_SAMPLES} more (--json lists all)")
    return "\n".join(lines)


def _thumb(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).resize(
        (THUMB, int(THUMB * image.shape[0] / image.shape[1])), Image.BILINEAR
    )


def _false_colour(latent: np.ndarray) -> np.ndarray:
    """(C, h, w) latent -> uint8 (h, w, 3) from its first three channels, min-max scaled."""
    x = latent[:3].astype(np.float32)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    return (np.moveaxis(x, 0, -1) * 255).astype(np.uint8)


def _trajectory_plot(
    cameras: np.ndarray, scene_cameras: np.ndarray, subject: np.ndarray | None
) -> Image.Image:
    """Top-down (x right, y up) plot of camera positions/directions, scene cameras and the subject path."""
    image = Image.new("RGB", (PLOT, PLOT + LEGEND), BG)
    draw = ImageDraw.Draw(image)
    pos, look = cameras[:, :3, 3], cameras[:, :3, 2]
    points = [pos[:, :2], scene_cameras[:, :3, 3][:, :2]] + ([subject[:, :2]] if subject is not None else [])
    everything = np.concatenate(points)
    lo, hi = everything.min(0), everything.max(0)
    span = max(float((hi - lo).max()), 1.0) * 1.35
    mid = (lo + hi) / 2
    arrow = span * 0.08

    def px(p):
        q = (np.asarray(p)[:2] - mid) / span
        return (PLOT / 2 + q[0] * (PLOT - 40), 10 + PLOT / 2 - q[1] * (PLOT - 40))

    for c2w in scene_cameras:
        start = c2w[:3, 3]
        draw.line([px(start), px(start + c2w[:3, 2] * arrow * 1.5)], fill=GREY, width=1)
    if subject is not None:
        draw.line([px(p) for p in subject], fill=(90, 220, 90), width=3)
        draw.ellipse([v - 4 for v in px(subject[-1])] + [v + 4 for v in px(subject[-1])], fill=(90, 220, 90))
    n = len(pos)
    for i in range(n):
        t = i / max(n - 1, 1)
        colour = (int(60 + 195 * t), 90, int(255 - 195 * t))
        if i:
            draw.line([px(pos[i - 1]), px(pos[i])], fill=colour, width=2)
        draw.line([px(pos[i]), px(pos[i] + look[i] * arrow)], fill=colour, width=1)
        draw.ellipse([v - 2 for v in px(pos[i])] + [v + 2 for v in px(pos[i])], fill=colour)
    draw.text((6, 4), "top view (x right, y up)", fill=FG)
    draw.text((6, PLOT + 4), f"camera: blue start -> red end ({span / 1.35:.1f} m across)", fill=FG)
    draw.text((6, PLOT + 18), "grey: scene-image cameras (panorama centre)", fill=GREY)
    if subject is not None:
        draw.text((6, PLOT + 32), "green: subject path (dot = end)", fill=(90, 220, 90))
    return image


def contact_sheet(shards, out_png, index: int = 0) -> Path:
    """Render sample ``index`` (manifest order) of ``shards`` to ``out_png``."""
    manifest = load_manifest(shards)
    refs = manifest.samples()
    if not 0 <= index < len(refs):
        raise CineSceneError(f"--sample {index} is outside 0..{len(refs) - 1}")
    ref = refs[index]
    try:
        fields = ShardReader().read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)
        expected = manifest.fields.get
        scene, cameras, scene_cameras = (
            npy_field(fields, n, expected=expected(n))
            for n in ("scene.npy", "cameras.npy", "scene_cameras.npy")
        )
        video, video_bg, latents = (
            npy_field(fields, n, optional=True, expected=expected(n))
            for n in ("video.npy", "video_bg.npy", "latents.npy")
        )
    except SampleError as exc:
        raise CineSceneError(f"sample {ref.key} in {ref.shard.name} is unreadable: {exc}") from None
    prompt = fields.get("prompt.txt", b"").decode("utf-8", "replace").strip()
    try:
        meta = json.loads(fields.get("meta.json", b"{}"))
    except ValueError:
        meta = {}
    shown = scene[:SHEET_SCENE_IMAGES]  # as stored: a training sample may use fewer (data.scene_images[_min])
    rows = [(f"scene images ({len(shown)} of {len(scene)} stored)", [_thumb(im) for im in shown])]
    if video is not None:
        picks = np.unique(np.linspace(0, len(video) - 1, min(6, len(video))).round().astype(int))
        rows.append((f"frames {', '.join(map(str, picks))} with subject", [_thumb(video[i]) for i in picks]))
        if video_bg is not None:
            rows.append(("same cameras without subject", [_thumb(video_bg[i]) for i in picks]))
    else:
        rows.append(
            (
                "latent frames (channels 0-2, false colour)",
                [_thumb(_false_colour(latents[:, t])) for t in range(min(6, latents.shape[1]))],
            )
        )
    track = meta.get("subject", {}).get("head_track")
    plot = _trajectory_plot(cameras, scene_cameras, None if track is None else np.asarray(track))
    width = max(PAD + sum(t.width + PAD for t in thumbs) for _, thumbs in rows) + PLOT + PAD
    lines = textwrap.wrap(f"{ref.key}: {prompt}", width=max(40, (width - 2 * PAD) // 6))
    header = 14 * len(lines) + PAD * 2
    row_heights = [16 + max(t.height for t in thumbs) + PAD for _, thumbs in rows]
    height = max(header + sum(row_heights), header + PLOT + LEGEND + PAD)
    sheet = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        draw.text((PAD, PAD + 14 * i), line, fill=FG)
    y = header
    for (label, thumbs), row_h in zip(rows, row_heights):
        draw.text((PAD, y), label, fill=FG)
        x = PAD
        for thumb in thumbs:
            sheet.paste(thumb, (x, y + 14))
            x += thumb.width + PAD
        y += row_h
    sheet.paste(plot, (width - PLOT - PAD, header))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, format="PNG")
    return out_png


def summary_json(summary: dict) -> str:
    return json.dumps(summary, sort_keys=True, indent=1)
