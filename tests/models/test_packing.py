"""Padding-aware attention: TokenPacking and the entry
point's packed path against a masked float64 reference."""

from __future__ import annotations

import pytest
import torch

from cinescene.models import attention as attn_mod
from cinescene.models.attention import SelfAttentionCall, attention
from cinescene.models.packing import TokenPacking, packing_from_valid


@pytest.fixture(autouse=True)
def fresh_backends():
    attn_mod.reset_backend_cache()
    yield
    attn_mod.reset_backend_cache()


def masked_reference(q, k, v, valid, num_video=None):
    """float64 softmax attention where no query sees a padding key and (with num_video) context queries see
    only context keys; padding queries give zeros. Queries sit at the first Lq key positions."""
    lq, lk = q.shape[1], k.shape[1]
    allowed = valid[:, None, None, :].expand(-1, 1, lq, lk).clone()
    if num_video is not None:
        context_q = torch.arange(lq) >= num_video
        video_k = torch.arange(lk) < num_video
        allowed[:, :, context_q[:, None] & video_k[None, :]] = False
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    # A padding query may see no key at all (a NaN row); it is zeroed below either way.
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.double())
    return torch.where(valid[:, :lq, None, None], out, torch.zeros_like(out))


def padded_batch(seed=0, batch=3, length=14, heads=2, dim=8):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, length, heads, dim, generator=gen, requires_grad=True) for _ in range(3))
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[0, 11:] = False  # context cut short
    valid[1, 6:9] = False  # padding in the middle (VGGT images padded, pixel tokens after them)
    valid[2, 5:] = False  # no context at all
    return q, k, v, valid


def test_packing_round_trip_prefix_and_context_starts():
    valid = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    packing = TokenPacking(valid)
    x = torch.arange(10.0).reshape(2, 5, 1)
    packed = packing.pack(x)
    assert packed.reshape(-1).tolist() == [0, 1, 3, 5, 6, 7, 8, 9]
    assert packing.cu_seqlens.tolist() == [0, 3, 8] and packing.max_seqlen == 5
    assert packing.unpack(packed).reshape(2, 5).tolist() == [[0, 1, 0, 3, 0], [5, 6, 7, 8, 9]]
    assert packing.prefix(2).lengths == [2, 2] and packing.real_before(3) == [2, 3]
    starts = packing.context_starts(3)
    assert starts.dtype == torch.int32 and starts.tolist() == [2, 3] and packing.context_starts(3) is starts
    assert packing_from_valid(torch.ones(2, 5, dtype=torch.bool)) is None
    with pytest.raises(ValueError, match="does not describe"):
        packing.pack(torch.zeros(2, 4, 1))
    with pytest.raises(ValueError, match="query prefix"):
        packing.prefix(7)
    with pytest.raises(ValueError, match="bool"):
        TokenPacking(valid.float())


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("num_video", [None, 5])
def test_packed_self_attention_matches_the_masked_reference(backend, num_video):
    q, k, v, valid = padded_batch()
    mask = "full" if num_video is None else "context_readonly"
    out = attention(q, k, v, num_video=num_video, mask=mask, backend=backend, packing=TokenPacking(valid))
    ref = masked_reference(q, k, v, valid, num_video)
    assert (out.double() - ref).abs().max() < 1e-5
    assert out[~valid].abs().max() == 0


@pytest.mark.parametrize("num_video", [None, 5])
def test_gradients_flow_to_real_tokens_only(num_video):
    q, k, v, valid = padded_batch(seed=1)
    weights = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    mask = "full" if num_video is None else "context_readonly"
    out = attention(q, k, v, num_video=num_video, mask=mask, backend="sdpa", packing=TokenPacking(valid))
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    ref = masked_reference(q, k, v, valid, num_video)
    ref_grads = torch.autograd.grad((ref * weights.double()).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        assert (got.double() - want).abs().max() < 1e-5
        assert got[~valid].abs().max() == 0


def test_padding_values_do_not_leak():
    """Whatever sits at padding (here huge values) changes no real output."""
    q, k, v, valid = padded_batch(seed=3)
    packing = TokenPacking(valid)
    noisy = [t.detach().masked_fill(~valid[..., None, None], 1e4) for t in (q, k, v)]
    clean = attention(q, k, v, num_video=5, mask="context_readonly", backend="sdpa", packing=packing)
    dirty = attention(*noisy, num_video=5, mask="context_readonly", backend="sdpa", packing=packing)
    assert torch.equal(clean[valid], dirty[valid])


def test_video_queries_over_a_longer_key_sequence():
    """The context cache's later steps: queries are the video prefix of the packed keys."""
    q, k, v, valid = padded_batch(seed=4)
    out = attention(q[:, :5], k, v, backend="sdpa", kind="self", packing=TokenPacking(valid))
    ref = masked_reference(q[:, :5], k, v, valid)
    assert out.shape == (3, 5, 2, 8) and (out.double() - ref).abs().max() < 1e-5


def test_self_attention_call_carries_its_packing():
    q, k, v, valid = padded_batch(seed=5)
    packing = TokenPacking(valid)
    call = SelfAttentionCall(5, "context_readonly", "sdpa", packing)
    assert call.packing is packing
    want = attention(q, k, v, num_video=5, mask="context_readonly", backend="sdpa", packing=packing)
    assert torch.equal(call(q, k, v), want)
