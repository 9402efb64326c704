"""mp4 through PyAV with the settings in its metadata, and the PNG strip."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cinescene.sampling import video
from tests.fixtures.video import read_mp4


def test_mp4_round_trip_keeps_frames_size_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (9, 12, 16, 3), dtype=np.uint8), 4, 1), 4, 2)
    path = tmp_path / "out" / "v.mp4"
    codec = video.write_mp4(path, smooth, fps=4, metadata={"seed": 7, "prompt": "a dog"})
    frames, metadata = read_mp4(path)
    assert codec in ("libx264", "mpeg4") and frames.shape == smooth.shape
    assert metadata == {"seed": 7, "prompt": "a dog"}
    assert np.abs(frames.astype(int) - smooth).mean() < 20  # lossy, but the same pictures
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left


def test_odd_sizes_are_padded_to_even(tmp_path):
    frames = np.zeros((3, 33, 45, 3), np.uint8)
    video.write_mp4(tmp_path / "odd.mp4", frames, fps=16)
    decoded, metadata = read_mp4(tmp_path / "odd.mp4")
    assert decoded.shape == (3, 34, 46, 3) and metadata is None


def test_strip_holds_up_to_eight_evenly_spaced_frames(tmp_path):
    frames = np.stack([np.full((10, 12, 3), i, np.uint8) for i in range(20)])
    video.write_strip(tmp_path / "s.png", frames)
    strip = np.asarray(Image.open(tmp_path / "s.png"))
    assert strip.shape == (10, 8 * 12 + 7 * 2, 3)
    assert [int(strip[0, k * 14, 0]) for k in range(8)] == list(video.strip_indices(20))
    assert list(video.strip_indices(20))[0] == 0 and list(video.strip_indices(20))[-1] == 19
    assert list(video.strip_indices(5)) == [0, 1, 2, 3, 4]
