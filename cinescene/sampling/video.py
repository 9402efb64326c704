"""Videos out: mp4 through PyAV (FFmpeg), a PNG strip of frames, and the settings that made them.

The mp4 uses H.264 (``libx264``) where the PyAV build has it, else MPEG-4
Part 2; yuv420p needs even sizes, so an odd row or column is padded by
repeating the edge. The settings go into the mp4's metadata (a ``cinescene``
tag holding JSON, written with ``movflags=use_metadata_tags`` so FFmpeg keeps
custom keys; ``comment`` holds the same for players that show only standard
tags) and into a JSON file beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from cinescene.durable import commit, temporary_name
from cinescene.errors import CineSceneError

METADATA_KEY = "cinescene"
STRIP_FRAMES = 8
PREFERRED_CODECS = ("libx264", "mpeg4")


def video_codec() -> str:
    import av

    for name in PREFERRED_CODECS:
        if name in av.codecs_available:
            return name
    raise CineSceneError(f"this PyAV build has none of the video encoders {', '.join(PREFERRED_CODECS)}")


def _even(frames: np.ndarray) -> np.ndarray:
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, metadata: dict | None = None) -> str:
    """Write uint8 frames (N, H, W, 3) as an mp4 (written to
    a temporary name, then renamed); returns the codec."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _even(np.ascontiguousarray(frames, dtype=np.uint8))
    codec = video_codec()
    tmp = temporary_name(path)
    try:
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "use_metadata_tags"}) as container:
            if metadata is not None:
                text = json.dumps(metadata, sort_keys=True)
                container.metadata[METADATA_KEY] = text
                container.metadata["comment"] = text
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            if codec == "mpeg4":
                stream.bit_rate = 8_000_000  # MPEG-4's default bit rate blurs small videos badly
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return codec


def strip_indices(count: int, limit: int = STRIP_FRAMES) -> Sequence[int]:
    """At most ``limit`` evenly spaced frame indices, first and last included."""
    if count <= limit:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, limit)})


def write_strip(path: str | Path, frames: np.ndarray, limit: int = STRIP_FRAMES) -> None:
    """A PNG of up to ``limit`` evenly spaced frames side by side, 2-pixel white gaps."""
    chosen = [frames[i] for i in strip_indices(len(frames), limit)]
    height, width = chosen[0].shape[:2]
    gap = 2
    canvas = np.full((height, len(chosen) * (width + gap) - gap, 3), 255, np.uint8)
    for k, frame in enumerate(chosen):
        canvas[:, k * (width + gap) : k * (width + gap) + width] = frame
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        Image.fromarray(canvas).save(tmp, format="PNG")
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
