"""Public API: input checks, availability, the custom op under opcheck and torch.compile, packing helpers."""

from __future__ import annotations

import pytest
import torch

import cinescene.kernels.attention as attn
from cinescene.kernels.attention import (
    fused_attention,
    fused_attention_varlen,
    is_available,
    pack_sequences,
    supports,
    unpack_sequences,
)
from cinescene.kernels.attention.reference import reference_attention


def _qkv(device, *shape, dtype=torch.float32, grad=False):
    return [torch.randn(*shape, device=device, dtype=dtype, requires_grad=grad) for _ in range(3)]


def test_available_here(device):
    assert is_available(device)
    assert is_available(torch.device(device))


def test_supports_and_rejects(device):
    q, k, v = _qkv(device, 1, 8, 2, 64)
    assert supports(q, k, v) and supports(q, k, v, num_video=4, mask="context_readonly")
    assert not supports(*_qkv(device, 1, 8, 2, 80))  # head dim not compiled for
    assert not supports(q, k.double(), v)  # mixed dtypes
    assert not supports(q, k, v, mask="causal")
    assert not supports(q, k, v, mask="context_readonly")  # num_video missing
    assert not supports(q, k[:, :, :1], v[:, :, :1])  # head counts differ


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mask="context_readonly"), "num_video"),
        (dict(mask="sliding"), "unknown attention mask"),
        (dict(num_video=-1, mask="context_readonly"), "num_video"),
    ],
)
def test_bad_arguments_raise(device, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fused_attention(*_qkv(device, 1, 8, 1, 16), **kwargs)


def test_bad_shapes_raise(device):
    q, k, v = _qkv(device, 1, 8, 1, 16)
    with pytest.raises(ValueError, match=r"\(B, L, H, D\)"):
        fused_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="head dims"):
        fused_attention(*_qkv(device, 1, 8, 1, 24))
    with pytest.raises(ValueError, match="see no key"):  # context queries but no context keys
        fused_attention(
            *_qkv(device, 1, 8, 1, 16)[:1],
            *_qkv(device, 1, 4, 1, 16)[:2],
            num_video=5,
            mask="context_readonly",
        )


def test_empty_sequence_returns_empty_and_zero_keys_raise(device):
    q, k, v = _qkv(device, 1, 0, 1, 16)
    assert fused_attention(q, k, v).shape == (1, 0, 1, 16)
    with pytest.raises(ValueError, match="zero keys"):
        fused_attention(_qkv(device, 1, 4, 1, 16)[0], k, v)


def test_cross_attention_to_a_short_text(device):
    """Lq != Lk the way the DiT's cross-attention calls it."""
    q = torch.randn(1, 45, 2, 32, device=device)
    k, v = (torch.randn(1, 12, 2, 32, device=device) for _ in range(2))
    assert (fused_attention(q, k, v).double().cpu() - reference_attention(q, k, v).cpu()).abs().max() < 1e-5


def test_pack_and_unpack_round_trip():
    seqs = [torch.randn(n, 2, 16) for n in (3, 1, 7)]
    packed, cu, longest = pack_sequences(seqs)
    assert cu.tolist() == [0, 3, 4, 11] and cu.dtype == torch.int32 and longest == 7
    assert all(torch.equal(a, b) for a, b in zip(unpack_sequences(packed, cu), seqs))


@pytest.mark.parametrize(
    "cu,match",
    [
        (torch.tensor([0, 5, 3], dtype=torch.int32), "not decrease"),
        (torch.tensor([0, 5, 9], dtype=torch.int64), "int32"),
        (torch.tensor([0, 9, 9], dtype=torch.int32), "longer than max_seqlen"),
    ],
)
def test_varlen_checks_cumulative_lengths(cu, match):
    q, k, v = _qkv("cpu", 9, 1, 16)
    with pytest.raises(ValueError, match=match):
        fused_attention_varlen(q, k, v, cu, cu, 5, 5)


def test_varlen_context_start_checks():
    q, k, v = _qkv("cpu", 9, 1, 16)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with pytest.raises(ValueError, match="2 sequences"):
        fused_attention_varlen(q, k, v, cu, cu, 5, 5, context_start=[1, 2, 3])
    with pytest.raises(ValueError, match="needs context_start"):
        fused_attention_varlen(q, k, v, cu, cu, 5, 5, mask="context_readonly")


@pytest.mark.slow
def test_custom_op_passes_opcheck(device):
    """Schema, fake (meta) implementation and autograd registration agree with the real kernel."""
    q, k, v = _qkv(device, 1, 21, 1, 16, grad=True)
    op = torch.ops.cinescene.attention_forward.default
    torch.library.opcheck(op, (q, k, v, None, None, None, 21, 21, 9, True, 0.25))
    cu = torch.tensor([0, 8, 21], dtype=torch.int32, device=device)
    starts = torch.tensor([3, 13], dtype=torch.int32, device=device)
    packed = [t[0].detach().requires_grad_() for t in (q, k, v)]
    torch.library.opcheck(op, (*packed, cu, cu, starts, 13, 13, 0, True, 0.25))


def test_torch_compile_fullgraph_with_autograd(device):
    """The op is one opaque node to dynamo: fullgraph capture, fake shapes, backward through AOTAutograd.

    ``aot_eager`` exercises all of that without a C++/GPU code generator; the
    inductor path is covered by the GPU test.
    """
    torch._dynamo.reset()

    def step(q, k, v):
        return (fused_attention(q * 2, k, v, num_video=11, mask="context_readonly") ** 2).sum()

    inputs = _qkv(device, 1, 23, 1, 16, grad=True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*inputs)
    loss.backward()
    grads = [t.grad.clone() for t in inputs]
    eager_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    eager = step(*eager_inputs)
    eager.backward()
    assert torch.allclose(loss, eager)
    assert all(torch.allclose(a, b.grad) for a, b in zip(grads, eager_inputs))


def test_package_import_is_light():
    """Importing the public package must not import triton (the CLI and the model import it lazily)."""
    import subprocess
    import sys

    code = (
        "import sys, cinescene.kernels.attention as a; "
        "assert 'triton' not in sys.modules, 'triton imported'; print(a.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_public_names():
    assert set(attn.__all__) >= {"fused_attention", "fused_attention_varlen", "is_available", "supports"}


def test_model_entry_point_runs_the_fused_backend(device):
    """cinescene.models.attention.attention(backend="fused")
    reaches these kernels with the agreed signature."""
    from cinescene.models import attention as entry

    entry.reset_backend_cache()
    try:
        q, k, v = _qkv(device, 1, 30, 2, 16)
        out = entry.attention(q, k, v, num_video=18, mask="context_readonly", backend="fused")
        ref = reference_attention(q, k, v, num_video=18, mask="context_readonly")
        assert (out.double().cpu() - ref.cpu()).abs().max() < 1e-5
    finally:
        entry.reset_backend_cache()


@pytest.mark.parametrize("mask", ["full", "context_readonly"])
def test_model_entry_point_packs_padded_batches_into_the_varlen_kernel(device, mask):
    """A padded batch with a TokenPacking runs as one varlen launch: each sample equals the kernel-free
    reference over its real tokens alone, gradients included, and padding outputs are zero."""
    from cinescene.models import attention as entry
    from cinescene.models.packing import TokenPacking

    entry.reset_backend_cache()
    try:
        q, k, v = _qkv(device, 3, 40, 2, 16, grad=True)
        valid = torch.ones(3, 40, dtype=torch.bool)
        valid[0, 30:] = False
        valid[1, 20:26] = False
        valid[2, 17:] = False  # no context
        num_video = 17 if mask == "context_readonly" else None
        out = entry.attention(
            q, k, v, num_video=num_video, mask=mask, backend="fused", packing=TokenPacking(valid)
        )
        out.square().sum().backward()
        assert out[~valid].abs().max() == 0
        for row in range(3):
            real = valid[row].nonzero().reshape(-1).to(device)
            leaves = [t.detach()[row : row + 1].index_select(1, real).requires_grad_() for t in (q, k, v)]
            ref = reference_attention(*leaves, num_video=num_video, mask=mask)
            ref.square().sum().backward()
            assert (out[row : row + 1].index_select(1, real).double() - ref).abs().max() < 1e-4
            for full, leaf in zip((q, k, v), leaves):
                assert (
                    full.grad[row : row + 1].index_select(1, real).double() - leaf.grad.double()
                ).abs().max() < 1e-3
    finally:
        entry.reset_backend_cache()


def test_entry_point_compiles_cold_with_the_fused_backend(device):
    """torch.compile(fullgraph=True) of a caller of the model's entry point, first call of the process's
    backend cache: the kernels module is imported and the choice logged outside the traced code."""
    from cinescene.models import attention as entry

    entry.reset_backend_cache()
    torch._dynamo.reset()
    try:

        def step(q, k, v):
            return (
                entry.attention(q, k, v, num_video=13, mask="context_readonly", backend="fused")
                .square()
                .sum()
            )

        inputs = _qkv(device, 1, 21, 2, 16, grad=True)
        loss = torch.compile(step, fullgraph=True, backend="aot_eager")(*inputs)
        loss.backward()
        eager_inputs = [t.detach().clone().requires_grad_() for t in inputs]
        step(*eager_inputs).backward()
        assert all(torch.allclose(a.grad, b.grad, atol=1e-5) for a, b in zip(inputs, eager_inputs))
    finally:
        entry.reset_backend_cache()
        torch._dynamo.reset()


def test_not_runnable_message_is_one_line(monkeypatch):
    """Both entry points share one check; without a GPU or the interpreter they say what is missing."""
    import cinescene.kernels.attention.api as api

    monkeypatch.setattr(api, "is_available", lambda device=None: False)
    q, k, v = _qkv("cpu", 1, 8, 1, 16)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    for call in (
        lambda: fused_attention(q, k, v),
        lambda: fused_attention_varlen(q[0], k[0], v[0], cu, cu, 8, 8),
    ):
        with pytest.raises(
            RuntimeError, match=r"cannot run on cpu: they need a CUDA GPU \(or TRITON_INTERPRET=1"
        ):
            call()
