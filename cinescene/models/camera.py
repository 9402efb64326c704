"""Camera conditioning input: the target trajectory as 12 numbers per latent frame.

``cameras`` are OpenCV camera-to-world matrices C_i (B, T, 4, 4), one per
latent frame, in metres. Each frame is expressed relative to the reference
camera (``model.camera.reference = "first"``: C_0), as ReCamMaster does:
``inv(C_0) @ C_i``, i.e. frame i's camera in frame 0's camera coordinates;
its top 3x4 [R|t] flattened row-major is the 12-d input of every block's
``cam_encoder``. Frame 0 is always [I|0], so a trajectory's absolute
placement in the world does not matter.

Scene anchoring (``model.scene.pose_embedding``) expresses the scene images'
cameras ``scene_cameras`` (B, S, 4, 4) in the same frame, ``inv(C_0) @ C_scene_s``,
so the scene images and the trajectory share one coordinate system whose
origin is where the generated video starts.
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


def _check_cameras(cameras: torch.Tensor, name: str, axis: str) -> None:
    if cameras.dim() != 4 or cameras.shape[-2:] != (4, 4):
        raise ValueError(
            f"{name} must be (B, {axis}, 4, 4) camera-to-world matrices, got {tuple(cameras.shape)}"
        )


def _in_first_frame(cameras: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """(B, N, 12) [R|t] of inv(cameras[:, 0]) @ c2w[:, i], computed in float64, returned in fp32."""
    relative = rigid_inverse(cameras[:, :1].to(torch.float64)) @ c2w.to(torch.float64)
    return relative[..., :3, :4].reshape(*c2w.shape[:2], 12).float()


def relative_camera_features(cameras: torch.Tensor, reference: str = "first") -> torch.Tensor:
    """(B, T, 4, 4) camera-to-world -> (B, T, 12) [R|t] relative to the reference frame (fp32)."""
    _check_cameras(cameras, "cameras", "T")
    if reference != "first":
        raise ValueError(f"unknown camera reference {reference!r}")
    return _in_first_frame(cameras, cameras)


def scene_pose_features(cameras: torch.Tensor, scene_cameras: torch.Tensor) -> torch.Tensor:
    """Scene images' poses in the target's first camera
    frame: (B, S, 12) [R|t] of inv(C_0) @ C_scene_s (fp32).

    ``cameras`` (B, T, 4, 4) the target trajectory, ``scene_cameras`` (B, S, 4, 4),
    both camera-to-world. Zero padding images (``scene_counts``) give zeros.
    """
    _check_cameras(cameras, "cameras", "T")
    _check_cameras(scene_cameras, "scene_cameras", "S")
    if scene_cameras.shape[0] != cameras.shape[0]:
        raise ValueError(
            f"scene_cameras {tuple(scene_cameras.shape)} and cameras {tuple(cameras.shape)} "
            "hold different batch sizes"
        )
    return _in_first_frame(cameras, scene_cameras)
