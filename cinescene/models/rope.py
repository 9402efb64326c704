"""Wan's 3D rotary position embedding over (frame, height, width) token positions.

Each head's channels are read as ``D/2`` complex pairs ``(x[2i], x[2i+1])``.
They are split over the three axes as Wan does (real dims
``D - 4*(D//6)``, ``2*(D//6)``, ``2*(D//6)``: 44/42/42 for D=128, 8/4/4 for
D=16) and pair ``i`` of an axis with ``n`` real dims rotates by
``pos * theta^(-2i/n)``. Positions are explicit per token, so the context
images simply get frame indices after the video's (``F, F+1, ...``) and their
own spatial grid; any even head dim works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

THETA = 10000.0


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real channels given to (frame, height, width) for one head."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def grid_positions(
    frames: int, height: int, width: int, *, frame_offset: int = 0, device=None
) -> torch.Tensor:
    """(frames*height*width, 3) integer positions in the order tokens are flattened (f, h, w)."""
    f = torch.arange(frame_offset, frame_offset + frames, device=device)
    h = torch.arange(height, device=device)
    w = torch.arange(width, device=device)
    grid = torch.stack(torch.meshgrid(f, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = THETA) -> torch.Tensor:
    """(L, head_dim/2) rotation angles in float64 for integer positions (L, 3)."""
    pos = positions.to(torch.float64)
    parts = []
    for axis, dims in enumerate(axis_dims(head_dim)):
        if dims == 0:
            continue
        inv_freq = 1.0 / torch.pow(
            theta, torch.arange(0, dims, 2, dtype=torch.float64, device=pos.device) / dims
        )
        parts.append(torch.outer(pos[:, axis], inv_freq))
    return torch.cat(parts, dim=1)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (L, head_dim/2) for :func:`apply_rope` (angles in float64, then cast)."""
    angles = rope_angles(positions, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, L, H, D) by per-token tables (L, D/2): complex multiply on channel pairs.

    Computed in fp32 (Wan uses float64; fp32 matches it to ~1e-7 relative) and
    returned in x's dtype.
    """
    b, seq, heads, dim = x.shape
    pairs = x.float().reshape(b, seq, heads, dim // 2, 2)
    real, imag = pairs.unbind(-1)
    c = cos.float()[None, :, None, :]
    s = sin.float()[None, :, None, :]
    rotated = torch.stack((real * c - imag * s, real * s + imag * c), dim=-1)
    return rotated.reshape(b, seq, heads, dim).type_as(x)


def sequence_positions(
    video_grid: Sequence[int], context_grids: Sequence[tuple[int, int, int]], device=None
) -> torch.Tensor:
    """Positions of [video ++ context] tokens.

    ``context_grids`` lists (frame_index, height, width) blocks, one per context
    image and token kind, in sequence order; a context image's frame index is
    ``F + s`` (after the video's F frames).
    """
    f, h, w = video_grid
    blocks = [grid_positions(f, h, w, device=device)]
    for frame_index, ch, cw in context_grids:
        blocks.append(grid_positions(1, ch, cw, frame_offset=frame_index, device=device))
    return torch.cat(blocks, dim=0)
