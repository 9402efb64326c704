"""VGGT's camera head (``camera_head.*``): iterative refinement of a 9-d pose encoding per image.

From the last aggregator layer's camera token (2C wide): ``token_norm``,
then ``num_iterations`` rounds of adaLN modulation by the embedded current
estimate (``embed_pose``, ``poseLN_modulation.1``, parameter-free
``adaln_norm``), the ``trunk`` (transformer blocks over the S images),
``trunk_norm`` and ``pose_branch.{fc1,fc2}`` predicting a delta. The first
round starts from the learned ``empty_pose_tokens``. The encoding is
(translation 3, quaternion xyzw 4, fov_h, fov_w) of the OpenCV
camera-from-world transform; the field of view goes through a ReLU.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import Block, Mlp

POSE_DIM = 9


class CameraHead(nn.Module):
    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        attention_backend: str = "auto",
    ):
        super().__init__()
        self.trunk = nn.Sequential(
            *[
                Block(
                    dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, backend=attention_backend
                )
                for _ in range(trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_DIM)

    def forward(self, last_layer: torch.Tensor, num_iterations: int = 4) -> list[torch.Tensor]:
        """last_layer (B, S, P, 2C) aggregator output -> pose encodings (B, S, 9), one per iteration."""
        tokens = self.token_norm(last_layer[:, :, 0])
        b, s, _ = tokens.shape
        estimate = None
        outputs = []
        for _ in range(num_iterations):
            # The previous estimate conditions the next round but is not backpropagated through.
            source = self.empty_pose_tokens.expand(b, s, -1) if estimate is None else estimate.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            modulated = tokens + gate * (self.adaln_norm(tokens) * (1 + scale) + shift)
            delta = self.pose_branch(self.trunk_norm(self.trunk(modulated)))
            estimate = delta if estimate is None else estimate + delta
            outputs.append(activate_pose(estimate))
        return outputs


def activate_pose(encoding: torch.Tensor) -> torch.Tensor:
    """Translation and quaternion stay linear; the two fields of view are made non-negative."""
    return torch.cat([encoding[..., :7], torch.relu(encoding[..., 7:])], dim=-1)


def quaternion_to_matrix(quat: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions, scalar last (x, y, z, w), not necessarily unit -> (..., 3, 3) rotations."""
    x, y, z, w = quat.unbind(-1)
    two_s = 2.0 / (quat * quat).sum(-1)
    rows = (
        1 - two_s * (y * y + z * z),
        two_s * (x * y - z * w),
        two_s * (x * z + y * w),
        two_s * (x * y + z * w),
        1 - two_s * (x * x + z * z),
        two_s * (y * z - x * w),
        two_s * (x * z - y * w),
        two_s * (y * z + x * w),
        1 - two_s * (x * x + y * y),
    )
    return torch.stack(rows, -1).reshape(quat.shape[:-1] + (3, 3))


def pose_encoding_to_cameras(
    encoding: torch.Tensor, image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, 9) -> extrinsics (B, S, 3, 4) OpenCV camera-from-world, intrinsics (B, S, 3, 3) in pixels."""
    height, width = image_hw
    rotation = quaternion_to_matrix(encoding[..., 3:7])
    extrinsics = torch.cat([rotation, encoding[..., :3, None]], dim=-1)
    fy = (height / 2.0) / torch.tan(encoding[..., 7] / 2.0)
    fx = (width / 2.0) / torch.tan(encoding[..., 8] / 2.0)
    intrinsics = torch.zeros(encoding.shape[:-1] + (3, 3), dtype=encoding.dtype, device=encoding.device)
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = fx, fy
    intrinsics[..., 0, 2], intrinsics[..., 1, 2] = width / 2.0, height / 2.0
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics
