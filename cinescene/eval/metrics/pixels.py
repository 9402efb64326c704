"""Pixel metrics per frame: PSNR, SSIM, and the background mask that restricts both to the static scene.

Videos are uint8 (F, H, W, 3) numpy arrays or tensors (any device; the
arithmetic runs in float64 on that device, one frame at a time).

* PSNR: ``10 log10(255^2 / MSE)`` per frame over every pixel and channel;
  identical frames give ``inf`` (reported as such, never clipped).
* SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5, the
  window truncated at 3.5 sigma and normalised), K1 = 0.01, K2 = 0.03, data
  range 255, population (not sample) covariances; per RGB channel, the map
  averaged over the pixels whose window lies inside the image (a 5-pixel
  border is dropped) and over channels. This is scikit-image's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255, channel_axis=-1)``;
  tests/eval/test_pixels.py checks the equality.
* With a ``mask`` (True = pixel counts), PSNR's MSE and SSIM's mean run over
  the counted pixels only; a frame without any counted pixel gives NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Video = np.ndarray | torch.Tensor
DATA_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _frames(video: Video, device=None) -> torch.Tensor:
    tensor = torch.as_tensor(video)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected a video (F, H, W, 3), got shape {tuple(tensor.shape)}")
    return tensor.to(device) if device is not None else tensor


def _pair(generated: Video, reference: Video):
    a = _frames(generated)
    b = _frames(reference, a.device)
    if a.shape != b.shape:
        raise ValueError(f"generated {tuple(a.shape)} and reference {tuple(b.shape)} differ in shape")
    return a, b


def _mask(mask, shape, device) -> torch.Tensor | None:
    if mask is None:
        return None
    m = torch.as_tensor(mask, device=device).bool()
    if tuple(m.shape) != tuple(shape[:3]):
        raise ValueError(f"mask {tuple(m.shape)} must be (F, H, W) = {tuple(shape[:3])}")
    return m


def psnr(generated: Video, reference: Video, mask=None, data_range: float = DATA_RANGE) -> np.ndarray:
    """(F,) float64 PSNR in dB per frame; ``inf`` where a frame equals its reference (on the mask)."""
    a, b = _pair(generated, reference)
    valid = _mask(mask, a.shape, a.device)
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        err = (a[i].double() - b[i].double()).pow(2).mean(-1)  # (H, W), mean over channels
        if valid is not None:
            keep = valid[i]
            mse = float(err[keep].mean()) if bool(keep.any()) else math.nan
        else:
            mse = float(err.mean())
        out[i] = (
            math.nan if math.isnan(mse) else (math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse))
        )
    return out


def _gaussian_window(device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian, 'valid' region only: (N, 1, H, W) -> (N, 1, H - 10, W - 10)."""
    x = F.conv2d(x, window.view(1, 1, 1, -1))
    return F.conv2d(x, window.view(1, 1, -1, 1))


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """One frame pair (H, W, 3) -> the SSIM map (H - 10, W - 10), averaged over the channels."""
    if min(a.shape[0], a.shape[1]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(
            f"SSIM needs frames of at least {2 * SSIM_RADIUS + 1}x{2 * SSIM_RADIUS + 1} pixels, "
            f"got {a.shape[0]}x{a.shape[1]}"
        )
    window = _gaussian_window(a.device)
    x = a.double().permute(2, 0, 1).unsqueeze(1)  # (3, 1, H, W): channels as batch
    y = b.double().permute(2, 0, 1).unsqueeze(1)
    ux, uy = _blur(x, window), _blur(y, window)
    vx = _blur(x * x, window) - ux * ux
    vy = _blur(y * y, window) - uy * uy
    vxy = _blur(x * y, window) - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s[:, 0].mean(0)


def ssim(generated: Video, reference: Video, mask=None, data_range: float = DATA_RANGE) -> np.ndarray:
    """(F,) float64 SSIM per frame (see the module doc); 1.0 where a frame equals its reference."""
    a, b = _pair(generated, reference)
    valid = _mask(mask, a.shape, a.device)
    r = SSIM_RADIUS
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        s = ssim_map(a[i], b[i], data_range)
        if valid is not None:
            keep = valid[i, r:-r, r:-r]
            out[i] = float(s[keep].mean()) if bool(keep.any()) else math.nan
        else:
            out[i] = float(s.mean())
    return out


def background_mask(
    with_subject: Video, without_subject: Video, threshold: int = 0, dilate: int = 0
) -> np.ndarray:
    """(F, H, W) bool, True where the subject is absent: every channel of |with - without| <= threshold,
    after growing the subject region by ``dilate`` pixels (square neighbourhood)."""
    a, b = _pair(with_subject, without_subject)
    subject = (a.int() - b.int()).abs().amax(-1) > threshold  # (F, H, W)
    if dilate > 0:
        k = 2 * dilate + 1
        subject = F.max_pool2d(subject[:, None].float(), k, stride=1, padding=dilate)[:, 0] > 0
    return (~subject).cpu().numpy()
