"""Scene-Decoupled layout: UE <-> OpenCV conversion and the converter, on a fixture the renderer writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cinescene.data.clips import read_clip
from cinescene.data.geometry import look_at
from cinescene.data.scene_decoupled import convert, opencv_to_ue, parse_camera_file, ue_to_opencv
from cinescene.data.synth import synthesize
from cinescene.errors import CineSceneError

from .conftest import FRAMES, SCENE_IMAGES, SIZE


def _ue_camera(location_cm, yaw_deg, pitch_deg=0.0):
    """An Unreal camera transform (row-vector: rows = forward, right, up, location), left-handed world."""
    yaw, pitch = np.radians(yaw_deg), np.radians(pitch_deg)
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.array([-np.sin(yaw), np.cos(yaw), 0.0])  # UE: yaw +90 turns X towards +Y (to the right)
    up = np.cross(forward, right)  # rows of a proper rotation matrix (det +1), as Unreal's FMatrix
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3], m[3, :3] = forward, right, up, location_cm
    return m


def test_ue_to_opencv_axes_units_and_handedness():
    ue = _ue_camera([100.0, 200.0, 150.0], yaw_deg=0.0)  # looking along UE +X, 1.5 m up
    c2w = ue_to_opencv(ue)
    assert np.allclose(c2w[:3, 3], [1.0, -2.0, 1.5])  # metres, UE +Y becomes -y (right-handed)
    assert np.allclose(c2w[:3, 2], [1.0, 0.0, 0.0])  # OpenCV forward = UE forward
    assert np.allclose(c2w[:3, 1], [0.0, 0.0, -1.0])  # OpenCV down = -up
    assert np.allclose(c2w[:3, 0], [0.0, -1.0, 0.0])  # OpenCV right = UE right (+Y_ue -> -y)
    assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0)
    # Our look_at agrees: a camera at the same place looking along +x.
    assert np.allclose(look_at(c2w[:3, 3], c2w[:3, 3] + [1, 0, 0]), c2w)


def test_round_trip_and_relative_poses_match_recammaster():
    rng = np.random.default_rng(0)
    cams = np.stack(
        [
            _ue_camera(rng.uniform(-500, 500, 3), rng.uniform(-180, 180), rng.uniform(-30, 30))
            for _ in range(5)
        ]
    )
    ours = ue_to_opencv(cams)
    assert np.allclose(opencv_to_ue(ours), cams)
    # ReCamMaster's training script: transpose, take columns [1, 2, 0, 3], negate column 1, cm -> m.
    theirs = []
    for m in cams:
        c2w = m.T[:, [1, 2, 0, 3]].copy()
        c2w[:3, 1] *= -1.0
        c2w[:3, 3] /= 100.0
        theirs.append(c2w)
    theirs = np.stack(theirs)
    assert np.allclose(np.linalg.det(theirs[:, :3, :3]), -1.0)  # left-handed world: improper rotations
    for i in range(1, 5):
        assert np.allclose(np.linalg.inv(ours[0]) @ ours[i], np.linalg.inv(theirs[0]) @ theirs[i], atol=1e-9)


def test_parse_accepts_strings_nested_lists_and_camera_keys(tmp_path):
    m = _ue_camera([10.0, 20.0, 30.0], 45.0)
    as_string = " ".join("[" + " ".join(str(x) for x in row) + "]" for row in m)
    path = tmp_path / "cam.json"
    path.write_text(json.dumps({"frame1": m.tolist(), "frame0": {"cam01": as_string}, "fov": 60.0}))
    c2w, hfov, center = parse_camera_file(path)
    assert c2w.shape == (2, 4, 4) and np.allclose(c2w[0], c2w[1]) and np.isclose(hfov, np.radians(60))
    assert center is None
    path.write_text(json.dumps({"frame0": [1, 2, 3]}))
    with pytest.raises(CineSceneError, match="4x4"):
        parse_camera_file(path)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdv") / "sdv"
    synthesize(root, 2, FRAMES, SIZE, SCENE_IMAGES, seed=3, layout="scene-decoupled", show_progress=False)
    reference = tmp_path_factory.mktemp("ref") / "ref"
    synthesize(reference, 2, FRAMES, SIZE, SCENE_IMAGES, seed=3, show_progress=False)
    return root, reference


def test_fixture_is_written_in_the_public_layout(fixture_root):
    root, _ = fixture_root
    assert (root / "camera" / "whuman" / "clip_000000" / "clip_000000_cam.json").is_file()
    assert (root / "camera" / "wohuman" / "clip_000001" / "clip_000001_cam.json").is_file()
    assert (root / "panorama" / "clip_000000.png").is_file()


def test_converter_recovers_the_rendered_clip(fixture_root, tmp_path):
    root, reference = fixture_root
    out = convert(root, tmp_path / "clips", scene_images=4, captions=root / "captions", show_progress=False)
    for name in ("clip_000000", "clip_000001"):
        got, want = read_clip(out / name), read_clip(reference / name)
        assert np.allclose(got.c2w, want.c2w, atol=1e-9)
        assert np.allclose(got.K, want.K, atol=1e-6)
        assert np.allclose(got.pano_center, want.pano_center)
        assert np.array_equal(got.video, want.video) and np.array_equal(got.video_bg, want.video_bg)
        assert np.array_equal(got.panorama, want.panorama)
        assert got.prompt == want.prompt and len(got.scene_images) == 4
        assert got.meta["panorama_center_known"]


def test_converter_errors_are_one_line(fixture_root, tmp_path):
    root, _ = fixture_root
    with pytest.raises(CineSceneError, match="nope does not exist"):
        convert(tmp_path / "nope", tmp_path / "out", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CineSceneError, match="no scenes"):
        convert(tmp_path / "empty", tmp_path / "out", show_progress=False)
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(root, broken)
    (broken / "panorama" / "clip_000000.png").unlink()
    with pytest.raises(CineSceneError, match="no panorama") as info:
        convert(broken, tmp_path / "out2", show_progress=False)
    assert "\n" not in str(info.value)
