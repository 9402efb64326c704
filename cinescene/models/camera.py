"""Camera conditioning input: the target trajectory as 12 numbers per latent frame.

``cameras`` are OpenCV camera-to-world matrices C_i (B, T, 4, 4), one per
latent frame, in metres. Each frame is expressed relative to the reference
camera (``model.camera.reference = "first"``: C_0), as ReCamMaster does:
``inv(C_0) @ C_i``, i.e. frame i's camera in frame 0's camera coordinates;
its top 3x4 [R|t] flattened row-major is the 12-d input of every block's
``cam_encoder``. Frame 0 is always [I|0], so a trajectory's absolute
placement in the world does not matter.
"""
from __future__ import annotations

import torch


def rigid_inverse(c2w: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid (..., 4, 4) transforms via [R^T | -R^T t] (exact for rotations, no LU)."""
    rot = c2w[..., :3, :3]
    trans = c2w[..., :3, 3:]
    inv = torch.zeros_like(c2w)
    inv[..., :3, :3] = rot.transpose(-1, -2)
    inv[..., :3, 3:] = -rot.transpose(-1, -2) @ trans
    inv[..., 3, 3] = 1.0
    return inv


def relative_camera_features(cameras: torch.Tensor, reference: str = "first") -> torch.Tensor:
    """(B, T, 4, 4) camera-to-world -> (B, T, 12) [R|t] relative to the reference frame (fp32)."""
    if cameras.dim() != 4 or cameras.shape[-2:] != (4, 4):
        raise ValueError(f"cameras must be (B, T, 4, 4) camera-to-world matrices, got {tuple(cameras.shape)}")
    if reference != "first":
        raise ValueError(f"unknown camera reference {reference!r}")
    c2w = cameras.to(torch.float64)
    relative = rigid_inverse(c2w[:, :1]) @ c2w
    return relative[..., :3, :4].reshape(*cameras.shape[:2], 12).float()
