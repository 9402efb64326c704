"""Forward and gradients of the fused kernels against the float64 reference (tiny shapes on CPU).

The cases are the ``cinescene bench attention --check`` sweep in fp32 and
fp16 (D 32/64/128; lengths 1, 33, 37, 48, 77; Lq != Lk; readonly with the
context start block-aligned, straddling a block, in the tail block; packed
sequences with different context sizes; square and non-square tiles), plus
targeted cases below: the non-square tiles the GPU uses (scaled down to what
the interpreter runs quickly) at several readonly lengths.
"""

from __future__ import annotations

import pytest
import torch

from cinescene.kernels.attention import (
    config,
    forward,
    fused_attention,
    fused_attention_varlen,
    pack_sequences,
)
from cinescene.kernels.attention.check import (
    GPU_SHAPED_TILES,
    TOLERANCE,
    TRANSPOSED_TILES,
    Case,
    default_cases,
    run_case,
)
from cinescene.kernels.attention.config import Tiles, fixed_tiles
from cinescene.kernels.attention.reference import reference_attention, reference_attention_varlen

SWEEP = default_cases((torch.float32, torch.float16))


def _assert_close(result):
    assert result.passed, f"{result.case.label}: errors {result.errors} exceed {TOLERANCE[result.case.dtype]}"


@pytest.mark.slow  # the interpreter runs every case of the sweep (seconds each on a CPU)
@pytest.mark.parametrize("case", SWEEP, ids=[c.label for c in SWEEP])
def test_sweep_matches_float64_reference(case, device):
    _assert_close(run_case(case, device))


@pytest.mark.parametrize(
    "case",
    [
        Case(torch.bfloat16, head_dim=64, seqlen_q=37, seqlen_k=37, mask="context_readonly", num_video=20),
        Case(torch.bfloat16, head_dim=32, lengths_q=(9, 30), lengths_k=(9, 30), context_starts=(4, 16)),
    ],
    ids=["padded-readonly", "varlen-readonly"],
)
def test_bf16_loads_and_stores(case, device):
    """bf16 end to end (on CPU the interpreter's dots run upcast to fp32: its bf16 dot is broken)."""
    _assert_close(run_case(case, device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_inputs_from_a_fused_qkv_projection(dtype, device):
    """q/k/v as views into one (B, L, 3, H, D) tensor: passed by stride, no copies, same result."""
    qkv = torch.randn(2, 29, 3, 2, 32, dtype=torch.float32).to(device=device, dtype=dtype)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = fused_attention(q, k, v, num_video=13, mask="context_readonly")
    ref = reference_attention(q, k, v, num_video=13, mask="context_readonly")
    assert (out.double().cpu() - ref.cpu()).abs().max() < TOLERANCE[dtype]


def test_readonly_without_context_queries_is_the_full_mask(device):
    q, k, v = (torch.randn(1, 21, 1, 16, device=device) for _ in range(3))
    full = fused_attention(q, k, v)
    assert torch.equal(fused_attention(q, k, v, num_video=21, mask="context_readonly"), full)
    assert torch.equal(fused_attention(q, k, v, num_video=40, mask="context_readonly"), full)


def test_context_only_sequence_and_video_only_sequence_in_one_pack(device):
    """context_start 0 (all context) and >= length (no context) are plain full attention per sequence."""
    seqs = [torch.randn(n, 1, 16, device=device) for n in (19, 23)]
    packed, cu, longest = pack_sequences(seqs)
    out = fused_attention_varlen(packed, packed, packed, cu, cu, longest, longest, context_start=[0, 23])
    ref = reference_attention_varlen(packed.cpu(), packed.cpu(), packed.cpu(), cu.cpu(), cu.cpu())
    assert (out.double().cpu() - ref).abs().max() < 1e-5


def test_varlen_equals_padded_calls_per_sequence(device):
    """Packing changes nothing: each sequence's output equals its own padded call."""
    lengths, contexts = (33, 7, 50), (20, 3, 49)
    seqs = [torch.randn(n, 2, 32, device=device) for n in lengths]
    packed, cu, longest = pack_sequences(seqs)
    out = fused_attention_varlen(packed, packed, packed, cu, cu, longest, longest, context_start=contexts)
    for seq, ctx, start, stop in zip(seqs, contexts, cu[:-1].tolist(), cu[1:].tolist()):
        one = fused_attention(seq[None], seq[None], seq[None], num_video=ctx, mask="context_readonly")[0]
        assert (out[start:stop] - one).abs().max() < 1e-5


def test_gradient_of_video_keys_comes_only_from_video_queries(device):
    """Readonly mask, backward: a loss on context rows alone gives video keys zero dK and dV."""
    q, k, v = (torch.randn(1, 40, 1, 16, device=device, requires_grad=True) for _ in range(3))
    out = fused_attention(q, k, v, num_video=24, mask="context_readonly")
    out[:, 24:].sum().backward()
    assert k.grad[:, :24].abs().max() == 0 and v.grad[:, :24].abs().max() == 0
    assert k.grad[:, 24:].abs().max() > 0 and q.grad[:, :24].abs().max() == 0


def test_custom_softmax_scale(device):
    q, k, v = (torch.randn(1, 17, 1, 16, device=device) for _ in range(3))
    out = fused_attention(q, k, v, softmax_scale=0.05)
    assert (
        out.double().cpu() - reference_attention(q.cpu(), k.cpu(), v.cpu(), softmax_scale=0.05)
    ).abs().max() < 1e-5


NON_SQUARE = {"gpu-shaped": GPU_SHAPED_TILES, "transposed": TRANSPOSED_TILES}


@pytest.mark.parametrize("tiles", list(NON_SQUARE))
@pytest.mark.parametrize(
    "length,num_video",
    [(50, 16), (64, 32), (77, 40), (90, 85), (33, 1)],
    ids=["aligned-16-not-32", "aligned-both", "straddling-both", "tail-block", "one-video"],
)
def test_non_square_tiles_readonly_forward_and_gradients(tiles, length, num_video, device):
    _assert_close(
        run_case(
            Case(
                torch.float32,
                head_dim=16,
                seqlen_q=length,
                seqlen_k=length,
                mask="context_readonly",
                num_video=num_video,
                tiles=NON_SQUARE[tiles],
            ),
            device,
        )
    )


@pytest.mark.parametrize("tiles", list(NON_SQUARE))
def test_non_square_tiles_full_mask_unequal_lengths_and_varlen(tiles, device):
    _assert_close(
        run_case(Case(torch.float32, head_dim=16, seqlen_q=45, seqlen_k=20, tiles=NON_SQUARE[tiles]), device)
    )
    _assert_close(
        run_case(
            Case(
                torch.float16,
                head_dim=16,
                lengths_q=(33, 50),
                lengths_k=(33, 50),
                context_starts=(17, 32),
                tiles=NON_SQUARE[tiles],
            ),
            device,
        )
    )


def test_fixed_tiles_reach_the_launch_and_are_restored(monkeypatch, device):
    used = []
    real_launch = config.launch

    def spy(*args, **kwargs):
        used.append(real_launch(*args, **kwargs))
        return used[-1]

    monkeypatch.setattr(forward, "launch", spy)
    q = torch.randn(1, 40, 1, 16, device=device)
    with fixed_tiles(forward=Tiles(32, 16)):
        fused_attention(q, q, q)
    fused_attention(q, q, q)
    assert used[0] == Tiles(32, 16) and used[1] != Tiles(32, 16)
    with pytest.raises(ValueError, match="unknown kernels"):
        with fixed_tiles(backward=Tiles(16, 16)):
            pass
