"""bf16 at real sizes on a GPU (skipped without one): the checks the interpreter cannot do."""

from __future__ import annotations

import math

import pytest
import torch

from cinescene.kernels.attention import fused_attention, fused_attention_varlen, pack_sequences
from cinescene.kernels.attention.reference import readonly_allowed

pytestmark = pytest.mark.gpu


def _fp32_rows(q, k, v, rows, num_video=None):
    """fp32 reference output of the given query rows (all heads)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q[:, rows].float(), k.float()) / math.sqrt(q.shape[-1])
    if num_video is not None:
        allowed = readonly_allowed(rows, torch.arange(k.shape[1], device=q.device), num_video)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float())


@pytest.mark.parametrize(
    "heads,num_video,num_context", [(12, 32760, 0), (12, 32760, 15600), (40, 8190, 7800)]
)
@pytest.mark.parametrize("mask", ["full", "context_readonly"])
def test_bf16_forward_at_cinescene_sizes(heads, num_video, num_context, mask):
    if mask == "context_readonly" and num_context == 0:
        pytest.skip("no context to mask")
    n = num_video + num_context
    q, k, v = (torch.randn(1, n, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = fused_attention(q, k, v, num_video=num_video, mask=mask)
    rows = torch.cat([torch.arange(64), torch.arange(n - 64, n)]).cuda()
    ref = _fp32_rows(q, k, v, rows, num_video if mask != "full" else None)
    assert (out[:, rows].float() - ref).abs().max() < 2e-2


@pytest.mark.parametrize("mask", ["full", "context_readonly"])
def test_bf16_gradients_against_fp32(mask):
    n, num_video = 3000, 1900
    base = [torch.randn(1, n, 12, 128, device="cuda") for _ in range(3)]
    grad = torch.randn(1, n, 12, 128, device="cuda")
    ours = [t.bfloat16().requires_grad_() for t in base]
    ref = [t.clone().requires_grad_() for t in base]
    fused_attention(*ours, num_video=num_video, mask=mask).backward(grad.bfloat16())
    keep = None
    if mask != "full":
        pos = torch.arange(n, device="cuda")
        keep = readonly_allowed(pos, pos, num_video)
    torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in ref), attn_mask=keep
    ).transpose(1, 2).backward(grad)
    for a, b in zip(ours, ref):
        scale = max(1.0, float(b.grad.abs().max()))
        assert float((a.grad.float() - b.grad).abs().max()) / scale < 3e-2


def test_bf16_varlen_matches_padded_calls():
    lengths, contexts = (5000, 3000, 777), (3000, 2999, 777)
    seqs = [torch.randn(n, 12, 128, device="cuda", dtype=torch.bfloat16) for n in lengths]
    packed, cu, longest = pack_sequences(seqs)
    out = fused_attention_varlen(packed, packed, packed, cu, cu, longest, longest, context_start=contexts)
    for seq, ctx, start, stop in zip(seqs, contexts, cu[:-1].tolist(), cu[1:].tolist()):
        one = fused_attention(seq[None], seq[None], seq[None], num_video=ctx, mask="context_readonly")[0]
        assert (out[start:stop].float() - one.float()).abs().max() < 1e-2


def test_inductor_compiles_around_the_op():
    torch._dynamo.reset()
    q, k, v = (
        torch.randn(1, 1000, 12, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    step = torch.compile(
        lambda q, k, v: (
            fused_attention(q * 2, k, v, num_video=700, mask="context_readonly").float().square().sum()
        ),
        fullgraph=True,
    )
    step(q, k, v).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
