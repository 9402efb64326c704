"""3D RoPE: Wan's split and frequencies, any even head dim, context frames after the video."""

from __future__ import annotations

import pytest
import torch

from cinescene.models.rope import apply_rope, axis_dims, grid_positions, rope_cos_sin, sequence_positions


def wan_reference(x: torch.Tensor, grid, theta: float = 10000.0) -> torch.Tensor:
    """Wan's formulation: complex float64 tables per axis, concatenated, multiplied on channel pairs."""
    f, h, w = grid
    d = x.shape[-1]
    c = d // 2

    def table(length, dims):
        inv = 1.0 / torch.pow(theta, torch.arange(0, dims, 2, dtype=torch.float64) / dims)
        return torch.polar(
            torch.ones(length, dims // 2, dtype=torch.float64),
            torch.outer(torch.arange(length, dtype=torch.float64), inv),
        )

    tf, th, tw = table(f, d - 4 * (d // 6)), table(h, 2 * (d // 6)), table(w, 2 * (d // 6))
    freqs = torch.cat(
        [
            tf.view(f, 1, 1, -1).expand(f, h, w, -1),
            th.view(1, h, 1, -1).expand(f, h, w, -1),
            tw.view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, c)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], c, 2))
    return torch.view_as_real(xc * freqs).flatten(-2).float()


@pytest.mark.parametrize(
    "head_dim, split", [(128, (44, 42, 42)), (16, (8, 4, 4)), (64, (24, 20, 20)), (2, (2, 0, 0))]
)
def test_axis_split_is_wans(head_dim, split):
    assert axis_dims(head_dim) == split


@pytest.mark.parametrize("head_dim", [128, 16, 10])
def test_matches_wan_complex_reference(head_dim):
    grid = (3, 4, 5)
    x = torch.randn(2, 60, 3, head_dim)
    cos, sin = rope_cos_sin(grid_positions(*grid), head_dim)
    ours = apply_rope(x, cos, sin)
    ref = wan_reference(x, grid)
    diff = (ours - ref).abs().max().item()
    print(f"rope head_dim={head_dim}: max abs diff vs Wan complex float64 = {diff:.2e}")
    assert diff < 1e-5


def test_odd_head_dim_is_rejected():
    with pytest.raises(ValueError, match="even"):
        axis_dims(15)


def test_scores_depend_only_on_position_differences():
    """RoPE's point: q.k after rotation is invariant to shifting both positions (here: the frame)."""
    head_dim = 16
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), head_dim)
        ck, sk = rope_cos_sin(torch.tensor([pk]), head_dim)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score((2, 1, 3), (5, 0, 1)) == pytest.approx(score((12, 4, 3), (15, 3, 1)), abs=1e-5)
    assert score((2, 1, 3), (5, 0, 1)) != pytest.approx(score((2, 1, 3), (6, 0, 1)), abs=1e-4)


def test_context_frames_continue_after_video():
    video = (3, 2, 2)
    positions = sequence_positions(video, [(3, 2, 2), (4, 1, 3)])
    assert positions.shape == (12 + 4 + 3, 3)
    assert positions[:12, 0].max() == 2  # video frames 0..2
    assert torch.equal(positions[12:16, 0], torch.full((4,), 3))  # first scene image: frame F
    assert torch.equal(positions[16:, 0], torch.full((3,), 4))  # second: F + 1
    assert positions[16:, 1:].tolist() == [[0, 0], [0, 1], [0, 2]]  # its own grid
