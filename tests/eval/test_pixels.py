"""PSNR, SSIM (checked against scikit-image) and the background mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from cinescene.eval.metrics import pixels


def _videos(seed=0, frames=3, size=(40, 52)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
    # smooth structure plus noise, so SSIM is neither ~0 nor ~1
    smooth = np.cumsum(np.cumsum(rng.normal(size=(frames, *size, 3)), 1), 2)
    smooth = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    noisy = np.clip(smooth.astype(int) + rng.integers(-40, 41, smooth.shape), 0, 255).astype(np.uint8)
    return base, smooth, noisy


@pytest.mark.parametrize("pair", ["random", "structured"])
def test_ssim_equals_scikit_image(pair):
    base, smooth, noisy = _videos()
    a, b = (base, noisy) if pair == "random" else (smooth, noisy)
    ours = pixels.ssim(a, b)
    reference = [
        structural_similarity(
            x,
            y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        for x, y in zip(a, b)
    ]
    assert np.abs(ours - np.array(reference)).max() < 1e-10
    assert ours.max() < 0.99 and (pair == "random" or ours.min() > 0.05)


def test_ssim_accepts_tensors_and_rejects_tiny_frames():
    _, smooth, noisy = _videos()
    assert np.allclose(
        pixels.ssim(torch.from_numpy(smooth), torch.from_numpy(noisy)), pixels.ssim(smooth, noisy)
    )
    with pytest.raises(ValueError, match="at least 11x11"):
        pixels.ssim(smooth[:, :8, :8], noisy[:, :8, :8])


def test_psnr_matches_its_definition_and_is_inf_on_identical_frames():
    _, smooth, noisy = _videos()
    mse = ((smooth.astype(float) - noisy.astype(float)) ** 2).mean(axis=(1, 2, 3))
    assert np.allclose(pixels.psnr(smooth, noisy), 10 * np.log10(255.0**2 / mse))
    assert np.isposinf(pixels.psnr(smooth, smooth)).all()
    assert (pixels.ssim(smooth, smooth) == 1.0).all()


def test_masked_metrics_ignore_the_masked_pixels():
    _, smooth, noisy = _videos()
    mask = np.zeros(smooth.shape[:3], bool)
    mask[:, 15:, 20:] = True
    spoiled = noisy.copy()
    spoiled[~mask] = 0  # only outside the mask
    assert np.allclose(pixels.psnr(smooth, noisy, mask), pixels.psnr(smooth, spoiled, mask))
    assert np.allclose(pixels.ssim(smooth, noisy, mask=np.ones_like(mask)), pixels.ssim(smooth, noisy))
    # SSIM windows reach 5 pixels: spoiling far from the counted pixels changes nothing
    far = np.ones_like(mask)
    far[:, :10] = False
    spoiled = noisy.copy()
    spoiled[:, :5] = 0
    assert np.allclose(pixels.ssim(smooth, noisy, far), pixels.ssim(smooth, spoiled, far))
    assert math.isnan(pixels.psnr(smooth, noisy, np.zeros_like(mask))[0])


def test_background_mask_threshold_and_dilation():
    bg = np.full((1, 20, 20, 3), 100, np.uint8)
    video = bg.copy()
    video[0, 10, 10] = 200  # one subject pixel
    video[0, 2, 2] = 103  # compression-like noise
    exact = pixels.background_mask(video, bg)
    assert not exact[0, 10, 10] and not exact[0, 2, 2] and exact.sum() == 400 - 2
    tolerant = pixels.background_mask(video, bg, threshold=5)
    assert tolerant[0, 2, 2] and not tolerant[0, 10, 10]
    grown = pixels.background_mask(video, bg, threshold=5, dilate=2)
    assert (~grown[0, 8:13, 8:13]).all() and grown.sum() == 400 - 25
