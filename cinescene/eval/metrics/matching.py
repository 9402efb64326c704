"""Mat.Pix.: how many pixels of a generated frame match
a reference image under a consistent epipolar geometry.

For a pair (generated frame, reference image) a *matcher* proposes
correspondences; a fundamental matrix is fitted with OpenCV's USAC MAGSAC++
(``cv2.USAC_MAGSAC``), and its inliers are the matched pixels. The paper
counts with GIM, a learned matcher whose weights we cannot fetch; the default
here is weight-free SIFT with Lowe's ratio test (``eval.mat_pix.matcher``),
so absolute figures are not comparable with the paper's, only between runs.

Matchers are pluggable: a matcher is any ``(image_a, image_b) -> (points_a,
points_b)`` on uint8 RGB images returning (M, 2) float pixel coordinates;
:func:`register_matcher` adds a named one, and :func:`matched_pixels` also
takes a callable directly (e.g. a GIM or LoFTR wrapper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cinescene.config.eval import MatPixConfig

Points = tuple[np.ndarray, np.ndarray]
Matcher = Callable[[np.ndarray, np.ndarray], Points]
MIN_MATCHES = 8  # the fundamental matrix needs 8 correspondences (7 minimal + 1)
_FACTORIES: dict[str, Callable[[MatPixConfig], Matcher]] = {}


def register_matcher(name: str, factory: Callable[[MatPixConfig], Matcher]) -> None:
    """Make ``factory(cfg) -> matcher`` available as ``name`` (to :func:`build_matcher`)."""
    _FACTORIES[name] = factory


def build_matcher(cfg: MatPixConfig) -> Matcher:
    try:
        return _FACTORIES[cfg.matcher](cfg)
    except KeyError:
        raise ValueError(f"unknown matcher {cfg.matcher!r}; registered: {sorted(_FACTORIES)}") from None


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2GRAY)


def _ratio_matches(desc_a, desc_b, kp_a, kp_b, norm: int, ratio: float) -> Points:
    import cv2

    empty = (np.zeros((0, 2)), np.zeros((0, 2)))
    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return empty
    pairs = cv2.BFMatcher(norm).knnMatch(desc_a, desc_b, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    if not good:
        return empty
    points_a = np.array([kp_a[m.queryIdx].pt for m in good], dtype=np.float64)
    points_b = np.array([kp_b[m.trainIdx].pt for m in good], dtype=np.float64)
    return points_a, points_b


def sift_matcher(cfg: MatPixConfig) -> Matcher:
    import cv2

    sift = cv2.SIFT_create()

    def match(image_a: np.ndarray, image_b: np.ndarray) -> Points:
        kp_a, desc_a = sift.detectAndCompute(_gray(image_a), None)
        kp_b, desc_b = sift.detectAndCompute(_gray(image_b), None)
        return _ratio_matches(desc_a, desc_b, kp_a, kp_b, cv2.NORM_L2, cfg.ratio)

    return match


def orb_matcher(cfg: MatPixConfig) -> Matcher:
    import cv2

    orb = cv2.ORB_create(nfeatures=5000)

    def match(image_a: np.ndarray, image_b: np.ndarray) -> Points:
        kp_a, desc_a = orb.detectAndCompute(_gray(image_a), None)
        kp_b, desc_b = orb.detectAndCompute(_gray(image_b), None)
        return _ratio_matches(desc_a, desc_b, kp_a, kp_b, cv2.NORM_HAMMING, cfg.ratio)

    return match


register_matcher("sift", sift_matcher)
register_matcher("orb", orb_matcher)


def fundamental_inliers(points_a: np.ndarray, points_b: np.ndarray, cfg: MatPixConfig) -> int:
    """Correspondences consistent with one fundamental matrix (USAC MAGSAC++); 0 below 8 matches."""
    import cv2

    if len(points_a) < MIN_MATCHES:
        return 0
    try:
        _, inliers = cv2.findFundamentalMat(
            points_a, points_b, cv2.USAC_MAGSAC, cfg.ransac_threshold, cfg.confidence, cfg.max_iters
        )
    except cv2.error:  # degenerate correspondences (e.g. all on a line): USAC finds no model at all
        return 0
    return 0 if inliers is None else int(inliers.sum())


def matched_pixels(
    frames: np.ndarray,
    references: Sequence[np.ndarray],
    cfg: MatPixConfig,
    matcher: Matcher | None = None,
    paired: bool = False,
) -> np.ndarray:
    """(F,) matched pixels per generated frame.

    ``paired=False``: frame i against every reference image, counts combined by
    ``cfg.aggregate`` (sum or mean). ``paired=True``: frame i against reference i
    (the ground-truth video as reference).
    """
    import cv2

    cv2.setRNGSeed(0)  # MAGSAC samples at random: the same inputs give the same count
    matcher = matcher or build_matcher(cfg)
    if paired and len(references) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(references)} paired references")
    out = np.zeros(len(frames))
    for i, frame in enumerate(frames):
        targets = [references[i]] if paired else references
        counts = [fundamental_inliers(*matcher(frame, ref), cfg) for ref in targets]
        out[i] = float(np.mean(counts)) if cfg.aggregate == "mean" else float(np.sum(counts))
    return out
