"""The readonly mask skips blocks instead of computing and discarding them.

Each kernel takes a debug counter (``block_counts``) where every program
stores how many blocks of the other operand it visited. The expectation is
computed independently from the dense mask: a program must visit exactly the
blocks that hold at least one allowed (query, key) pair, no more, no fewer.
"""

from __future__ import annotations

import math

import pytest
import torch

from cinescene.kernels.attention.backward import attention_backward
from cinescene.kernels.attention.config import Tiles
from cinescene.kernels.attention.forward import attention_forward
from cinescene.kernels.attention.layout import Problem, default_scale
from cinescene.kernels.attention.reference import readonly_mask

TILES = Tiles(16, 16)
#: (forward, dK/dV, dQ) tile sets: square, the GPU candidates'
#: shapes scaled down, and the opposite orientation.
TILE_SETS = {
    "square": (TILES, TILES, TILES),
    "gpu-shaped": (Tiles(32, 16), Tiles(16, 32), Tiles(32, 16)),
    "transposed": (Tiles(16, 32), Tiles(32, 16), Tiles(16, 32)),
}


def _needed_blocks(allowed: torch.Tensor, block_rows: int, block_cols: int) -> torch.Tensor:
    """(row blocks,) number of column blocks holding any allowed pair, for each row block."""
    rows, cols = allowed.shape
    padded = torch.zeros(
        math.ceil(rows / block_rows) * block_rows, math.ceil(cols / block_cols) * block_cols, dtype=torch.bool
    )
    padded[:rows, :cols] = allowed
    tiles = padded.reshape(padded.shape[0] // block_rows, block_rows, -1, block_cols).any(dim=(1, 3))
    return tiles.sum(dim=1).to(torch.int32)


def _counts(problem: Problem, q, k, v, tiles=TILE_SETS["square"]):
    """Visited-block counts of the forward, dK/dV and dQ programs: (B*H, blocks) each."""
    forward_tiles, dkdv_tiles, dq_tiles = tiles
    bh = problem.batch * problem.heads
    fwd = torch.zeros(
        bh * math.ceil(problem.seqlen_q / forward_tiles.block_m), dtype=torch.int32, device=q.device
    )
    dkdv = torch.zeros(
        bh * math.ceil(problem.seqlen_k / dkdv_tiles.block_n), dtype=torch.int32, device=q.device
    )
    dq = torch.zeros(bh * math.ceil(problem.seqlen_q / dq_tiles.block_m), dtype=torch.int32, device=q.device)
    out, lse = attention_forward(q, k, v, problem, tiles=forward_tiles, block_counts=fwd)
    attention_backward(
        torch.ones_like(out),
        q,
        k,
        v,
        out,
        lse,
        problem,
        dkdv_tiles=dkdv_tiles,
        dq_tiles=dq_tiles,
        dkdv_block_counts=dkdv,
        dq_block_counts=dq,
    )
    return fwd.view(bh, -1).cpu(), dkdv.view(bh, -1).cpu(), dq.view(bh, -1).cpu()


@pytest.mark.parametrize("tile_set", list(TILE_SETS))
@pytest.mark.parametrize(
    "length,num_video",
    [(77, 37), (64, 32), (77, 70), (80, 8), (96, 40), (80, 48)],
    ids=["straddling", "aligned", "tail-block", "small-video", "even", "aligned-16-not-32"],
)
def test_each_program_visits_exactly_the_blocks_with_allowed_pairs(length, num_video, tile_set, device):
    q, k, v = (torch.randn(1, length, 1, 16, device=device) for _ in range(3))
    problem = Problem(1, 1, 16, length, length, default_scale(16), readonly=True, num_video=num_video)
    forward_tiles, dkdv_tiles, dq_tiles = tiles = TILE_SETS[tile_set]
    fwd, dkdv, dq = _counts(problem, q, k, v, tiles)
    allowed = readonly_mask(length, length, num_video)
    assert fwd[0].tolist() == _needed_blocks(allowed, forward_tiles.block_m, forward_tiles.block_n).tolist()
    assert dq[0].tolist() == _needed_blocks(allowed, dq_tiles.block_m, dq_tiles.block_n).tolist()
    # dK/dV programs own BLOCK_N keys and walk BLOCK_M queries: the transposed mask's blocks.
    assert dkdv[0].tolist() == _needed_blocks(allowed.T, dkdv_tiles.block_n, dkdv_tiles.block_m).tolist()


def test_full_mask_visits_every_block(device):
    q, k, v = (torch.randn(1, 37, 1, 16, device=device) for _ in range(3))
    problem = Problem(1, 1, 16, 37, 50, default_scale(16))
    k, v = (torch.randn(1, 50, 1, 16, device=device) for _ in range(2))
    fwd, dkdv, dq = _counts(problem, q, k, v)
    assert fwd[0].tolist() == [4] * 3 and dq[0].tolist() == [4] * 3 and dkdv[0].tolist() == [3] * 4


@pytest.mark.parametrize("tile_set", list(TILE_SETS))
def test_packed_sequences_skip_per_their_own_context_start(tile_set, device):
    lengths, contexts = [40, 70], [18, 64]
    cu = torch.tensor([0, 40, 110], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(110, 1, 16, device=device) for _ in range(3))
    problem = Problem(
        2,
        1,
        16,
        70,
        70,
        default_scale(16),
        readonly=True,
        cu_seqlens_q=cu,
        cu_seqlens_k=cu,
        context_start=torch.tensor(contexts, dtype=torch.int32, device=device),
    )
    forward_tiles, dkdv_tiles, _ = tiles = TILE_SETS[tile_set]
    fwd, dkdv, dq = _counts(problem, q, k, v, tiles)
    for seq, (length, ctx) in enumerate(zip(lengths, contexts)):
        allowed = readonly_mask(length, length, ctx)
        n_fwd, n_dkdv = math.ceil(length / forward_tiles.block_m), math.ceil(length / dkdv_tiles.block_n)
        assert (
            fwd[seq, :n_fwd].tolist()
            == _needed_blocks(allowed, forward_tiles.block_m, forward_tiles.block_n).tolist()
        )
        assert (
            dkdv[seq, :n_dkdv].tolist()
            == _needed_blocks(allowed.T, dkdv_tiles.block_n, dkdv_tiles.block_m).tolist()
        )
        assert (
            fwd[seq, n_fwd:].sum() == 0 and dkdv[seq, n_dkdv:].sum() == 0
        )  # programs past the sequence exit


def test_counters_need_explicit_tiles(device):
    q = torch.randn(1, 16, 1, 16, device=device)
    with pytest.raises(ValueError, match="tiles"):
        attention_forward(
            q, q, q, Problem(1, 1, 16, 16, 16, 0.25), block_counts=torch.zeros(1, dtype=torch.int32)
        )
