"""Camera presets and JSON trajectories for `cinescene sample`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cinescene.errors import CineSceneError
from cinescene.eval.metrics.camera import relative_to_first, rotation_errors
from cinescene.sampling import cameras


def _relative(name, frames=5, scale=1.0):
    return relative_to_first(cameras.preset(name, frames, scale))


def test_presets_move_as_named_in_camera_coordinates():
    # OpenCV camera axes: x right, y down, z forward
    assert np.allclose(_relative("dolly_in")[-1, :3, 3], [0, 0, 2.0])
    assert np.allclose(_relative("dolly_out", scale=0.5)[-1, :3, 3], [0, 0, -1.0])
    assert np.allclose(_relative("truck_right")[-1, :3, 3], [2.0, 0, 0])
    assert np.allclose(_relative("crane_up")[-1, :3, 3], [0, -1.5, 0])  # up = camera -y at frame 0
    pan = _relative("pan_right")
    assert np.degrees(rotation_errors(pan[:1], pan[-1:]))[0] == pytest.approx(60.0)
    assert pan[-1, 0, 2] > 0.8  # the forward axis turned towards +x (right)
    assert np.allclose(pan[:, :3, 3], 0)
    orbit = _relative("orbit_left")
    assert orbit[-1, 0, 3] < -1.0  # moves left ...
    centre = np.array([0, 0, 3.0, 1.0])  # ... still looking at the point 3 m ahead
    seen = np.linalg.inv(orbit[-1]) @ centre
    assert np.allclose(seen[:2], 0, atol=1e-9) and seen[2] == pytest.approx(3.0)
    still = _relative("static", 4)
    assert np.allclose(still, np.eye(4))


def test_presets_ease_in_and_out_and_reject_bad_input():
    steps = np.linalg.norm(np.diff(_relative("dolly_in", 9)[:, :3, 3], axis=0), axis=1)
    assert steps[0] < steps[4] and steps[-1] < steps[4]
    with pytest.raises(CineSceneError, match="unknown camera preset 'zoom'"):
        cameras.preset("zoom", 5)
    with pytest.raises(CineSceneError, match="camera-scale"):
        cameras.preset("dolly_in", 5, float("nan"))


def test_json_trajectories(tmp_path):
    path = cameras.preset("orbit_right", 17)
    full = tmp_path / "source_frames.json"
    full.write_text(json.dumps({"c2w": path.tolist(), "fov": 55}))
    poses, fov = cameras.load_trajectory(full, 5)  # 17 source frames -> every 4th
    assert fov == 55.0 and np.allclose(poses, path[::4])
    short = tmp_path / "latent_frames_3x4.json"
    short.write_text(json.dumps([c[:3].tolist() for c in path[::4]]))
    assert np.allclose(cameras.load_trajectory(short, 5)[0], path[::4])
    clip_style = tmp_path / "cameras.json"
    clip_style.write_text(
        json.dumps({"frames": [{"c2w": c.tolist(), "K": np.eye(3).tolist()} for c in path]})
    )
    assert np.allclose(cameras.load_trajectory(clip_style, 5)[0], path[::4])
    resolved, _, text = cameras.resolve_camera(str(short), 5)
    assert np.allclose(resolved, path[::4]) and "file" in text


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a camera trajectory"),
        (json.dumps({"poses": []}), '"c2w"'),
        (json.dumps([np.eye(4).tolist()] * 7), "7 cameras"),
        (json.dumps([(2 * np.eye(4))[:3].tolist()] * 5), "not a rotation"),
        (json.dumps({"c2w": [np.eye(4).tolist()] * 5, "fov": 400}), "fov"),
        (json.dumps([[[float("nan")] * 4] * 4] * 5), "non-finite"),
        # absurd values: each names what is wrong instead of sampling a black video
        (json.dumps([np.diag([-1.0, 1, 1, 1]).tolist()] * 5), "mirrored"),
        (json.dumps([(2 * np.eye(4)).tolist()] * 5), "bottom row"),
        (
            json.dumps(
                [np.eye(4).tolist()] * 4 + [[[1, 0, 0, 1e300], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]
            ),
            "m from the origin",
        ),
        (json.dumps({"c2w": [np.eye(4).tolist()] * 5, "fov": True}), "fov"),
        (json.dumps([[["1", 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]] * 5), "JSON numbers"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_bad_trajectory_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CineSceneError, match=message) as info:
        cameras.load_trajectory(path, 5)
    assert "\n" not in str(info.value)
    with pytest.raises(CineSceneError, match="missing.json does not exist"):
        cameras.load_trajectory(tmp_path / "missing.json", 5)
    with pytest.raises(CineSceneError, match="is a directory, not a file"):
        cameras.load_trajectory(tmp_path, 5)
