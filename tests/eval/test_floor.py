"""The metric pipeline's floor on ground truth (docs/EVAL.md, "Floors"): a perfect video scores the floor,
and shuffled frames, a wrong trajectory and an unrelated scene score clearly worse."""

from __future__ import annotations

import numpy as np
import pytest

from cinescene.config.eval import EvalConfig
from cinescene.eval import floor


@pytest.fixture(scope="module")
def room():
    clip = floor.render_clip(2)  # a textured room, a 135-degree orbit, 17 frames at 256x256
    assert clip.meta["scene"]["kind"] == "room" and clip.video.shape == (17, 256, 256, 3)
    return clip


@pytest.mark.slow
def test_ground_truth_against_itself(room):
    values = floor.pixel_floor(room, EvalConfig())
    assert values["psnr"] == float("inf") and values["bg_psnr"] == float("inf")
    assert values["ssim"] == 1.0 and values["bg_ssim"] == 1.0


@pytest.mark.slow
def test_sfm_recovers_the_trajectory_and_tells_wrong_ones_apart(room):
    other = floor.render_clip(0, size=32).c2w  # a dolly: only its cameras are used
    result = floor.camera_floor(room, other, EvalConfig())
    assert result.registered == 17, result.failures
    truth = result.truth
    # measured 0.56 / 0.23 / 0.83 (docs/EVAL.md); the bounds leave room for other CPUs and COLMAP builds
    assert truth["rot_err"] < 1.2 and truth["trans_err"] < 1.0 and truth["cam_mc"] < 2.0, truth
    assert result.shuffled is None or result.shuffled["cam_mc"] > 3 * truth["cam_mc"], result.shuffled
    assert result.wrong["cam_mc"] > 5 * truth["cam_mc"] and result.wrong["rot_err"] > 10 * truth["rot_err"]


@pytest.mark.slow
def test_mat_pix_of_ground_truth_is_well_above_an_unrelated_scene(room):
    unrelated = floor.render_clip(floor.UNRELATED_CLIP, frames=1)
    assert unrelated.meta["scene"]["kind"] != "room"
    own, other = floor.mat_pix_floor(room, unrelated.scene_images, EvalConfig(), frames=5)
    assert own > 10 and own > 5 * max(other, 1.0), (own, other)


def test_shuffled_order_keeps_the_reference_frame():
    order = floor.shuffled_order(17)
    assert order[0] == 0 and sorted(order) == list(range(17)) and (order != np.arange(17)).any()
