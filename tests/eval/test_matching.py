"""Mat.Pix.: fundamental-matrix inliers, the pluggable matcher, and the built-in SIFT / ORB matchers."""

from __future__ import annotations

import numpy as np
import pytest

from cinescene.config.eval import MatPixConfig
from cinescene.data.geometry import intrinsics, look_at, project
from cinescene.eval.metrics import matching


def _two_views(inliers=120, outliers=60, seed=0):
    """Correspondences of random 3D points seen by two cameras, plus random pairs."""
    rng = np.random.default_rng(seed)
    points = rng.uniform([-2, -2, -1], [2, 2, 1], (inliers, 3)) + [0.0, 0.0, 0.0]
    K = intrinsics(240, 320, np.radians(60))
    a = look_at([-6.0, 0.5, 0.3], [0, 0, 0])
    b = look_at([-5.0, -2.5, 0.8], [0, 0, 0])
    pa, pb = project(points, a, K)[0], project(points, b, K)[0]
    ra, rb = rng.uniform(0, 320, (outliers, 2)), rng.uniform(0, 320, (outliers, 2))
    return np.concatenate([pa, ra]), np.concatenate([pb, rb])


def test_inliers_are_the_geometrically_consistent_matches():
    pa, pb = _two_views(inliers=120, outliers=60)
    count = matching.fundamental_inliers(pa, pb, MatPixConfig())
    assert 115 <= count <= 130  # the true matches, and at most a few random ones by chance
    assert matching.fundamental_inliers(pa[:7], pb[:7], MatPixConfig()) == 0  # too few to fit F
    line = np.stack([np.arange(20.0), np.arange(20.0)], 1)
    assert matching.fundamental_inliers(line, line + 1, MatPixConfig()) in range(
        0, 21
    )  # degenerate: no crash


def test_a_pluggable_matcher_is_used_per_frame_and_reference():
    pa, pb = _two_views()
    calls = []

    def matcher(frame, reference):
        calls.append((frame[0, 0, 0], reference[0, 0, 0]))
        return (pa, pb) if reference[0, 0, 0] == 1 else (pa[:5], pb[:5])

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    references = [np.full((8, 8, 3), v, np.uint8) for v in (1, 2, 1)]
    total = matching.matched_pixels(frames, references, MatPixConfig(aggregate="sum"), matcher)
    mean = matching.matched_pixels(frames, references, MatPixConfig(aggregate="mean"), matcher)
    assert len(calls) == 12 and total[0] == total[1] and total[0] > 200
    assert mean[0] == pytest.approx(total[0] / 3)
    paired = matching.matched_pixels(frames, references[:2], MatPixConfig(), matcher, paired=True)
    assert paired[0] > 100 and paired[1] == 0

    matching.register_matcher("test-fixed", lambda cfg: matcher)
    try:
        cfg = MatPixConfig()
        cfg.matcher = "test-fixed"
        assert (matching.matched_pixels(frames, references, cfg) == total).all()
    finally:
        matching._FACTORIES.pop("test-fixed")


@pytest.mark.parametrize("name", ["sift", "orb"])
def test_builtin_matchers_match_an_image_with_itself(name):
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image = np.kron(texture, np.ones((8, 8, 1), np.uint8))  # 192x256 blocks: corners for keypoints
    shifted = np.roll(image, 5, axis=1)
    cfg = MatPixConfig(matcher=name)
    same = matching.matched_pixels(image[None], [shifted], cfg)[0]
    other = matching.matched_pixels(
        image[None], [np.roll(rng.integers(0, 256, image.shape, dtype=np.uint8), 0)], cfg
    )[0]
    assert same > 50 and same > 5 * max(other, 1)
