"""The trajectory plot draws what the camera metrics compare: both paths relative to their first frame, in
a unit ball, over the frames SfM registered."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cinescene.data.synth.generate import render_synthetic_clip
from cinescene.eval.metrics import camera
from cinescene.eval.trajectory_plot import sample_trajectory_svg, trajectory_paths, trajectory_svg


@pytest.fixture(scope="module")
def requested():
    return render_synthetic_clip(0, 3, 9, (32, 32), 1, camera_moves=["truck"]).c2w


def similar(c2w, scale=3.0):
    """The same trajectory seen by SfM: another world frame and another scale."""
    turn = np.eye(4)
    angle = 0.7
    turn[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    turn[:3, 3] = [5.0, -2.0, 1.0]
    out = turn @ c2w
    out[:, :3, 3] *= scale
    return out


def test_a_recovered_path_equal_up_to_frame_and_scale_is_drawn_on_the_requested_one(requested):
    recovered = similar(requested)
    assert camera.camera_errors(requested, recovered)["cam_mc"] < 1e-9
    ask, got = trajectory_paths(requested, {"model": recovered})
    assert np.allclose(ask.centres, got.centres) and np.allclose(ask.forward, got.forward)
    assert np.isclose(np.linalg.norm(ask.centres, axis=-1).max(), 1.0) and np.allclose(ask.centres[0], 0)


def test_unregistered_frames_are_left_out_of_both_paths(requested):
    recovered = similar(requested)
    recovered[[2, 5]] = np.nan
    ask, got = trajectory_paths(requested, {"model": recovered})
    kept = [i for i in range(len(requested)) if i not in (2, 5)]
    assert len(ask.centres) == len(got.centres) == len(kept)
    expected = camera.normalize_translation(camera.relative_to_first(requested[kept]))
    assert np.allclose(ask.centres, expected[:, :3, 3])


def test_the_svg_has_both_views_a_legend_and_the_failures(requested):
    svg = trajectory_svg(requested, {"a <model>": similar(requested), "failed": None}, ["failed: SfM failed"])
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert len(re.findall("<polyline", svg)) == 2 * 2  # two paths (the failed one draws nothing), two views
    assert (
        "top view" in svg and "side view" in svg and "a &lt;model&gt;" in svg and "failed: SfM failed" in svg
    )


def test_a_sample_plot_comes_from_evaluation_records(requested):
    records = {
        "arm": {"cameras": camera.poses_to_json(requested), "sfm": {"failure": "no reconstruction"}},
        "floor": {"sfm": {"failure": None, "recovered": camera.poses_to_json(similar(requested))}},
    }
    svg = sample_trajectory_svg(records)
    assert "arm: SfM failed (no reconstruction)" in svg and ">floor<" in svg and ">requested<" in svg
    assert sample_trajectory_svg({"arm": {"metrics": {}}}) is None  # no cameras recorded: no plot


def test_poses_survive_json_with_unknown_frames(requested):
    poses = requested.copy()
    poses[1] = np.nan
    data = camera.poses_to_json(poses)
    assert data[1] is None and np.allclose(camera.poses_from_json(data)[0], requested[0])
    assert np.isnan(camera.poses_from_json(data)[1]).all()
    with pytest.raises(ValueError):
        camera.poses_from_json([])
