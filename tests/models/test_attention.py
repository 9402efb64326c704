"""The attention entry point: masks against a dense reference, backend choice, logging once."""

from __future__ import annotations

import contextlib
import logging
import sys
import types

import pytest
import torch

from cinescene.errors import CineSceneError
from cinescene.kernels.attention.reference import readonly_mask
from cinescene.models import attention as attn_mod
from cinescene.models.attention import attention


def dense_reference(q, k, v, allowed=None):
    """Softmax attention in float64 with an explicit (Lq, Lk) boolean mask."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.double()).float()


@pytest.fixture(autouse=True)
def fresh_backends():
    attn_mod.reset_backend_cache()
    yield
    attn_mod.reset_backend_cache()


def qkv(length=13, heads=3, dim=8, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, heads, dim, generator=gen, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("backend", ["sdpa", "math", "auto"])
def test_full_mask_matches_reference(backend):
    q, k, v = qkv()
    diff = (attention(q, k, v, backend=backend) - dense_reference(q, k, v)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("num_video", [1, 8, 12])
def test_context_readonly_matches_dense_mask(backend, num_video):
    q, k, v = qkv()
    ours = attention(q, k, v, num_video=num_video, mask="context_readonly", backend=backend)
    ref = dense_reference(q, k, v, readonly_mask(13, 13, num_video))
    diff = (ours - ref).abs().max().item()
    print(f"context_readonly ({backend}, num_video={num_video}): max abs diff vs dense mask = {diff:.2e}")
    assert diff < 1e-5
    # Gradients of the split computation equal the dense-mask reference's.
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() < 1e-4


def test_readonly_really_hides_video_from_context():
    q, k, v = qkv()
    out = attention(q, k, v, num_video=8, mask="context_readonly")
    v2 = v.detach().clone()
    v2[:, :8] += 100.0  # change only video values
    out2 = attention(q, k, v2, num_video=8, mask="context_readonly")
    assert torch.allclose(out[:, 8:], out2[:, 8:])  # context queries unaffected
    assert not torch.allclose(out[:, :8], out2[:, :8])  # video queries see it


def test_readonly_without_context_is_full():
    q, k, v = qkv()
    assert torch.allclose(attention(q, k, v, num_video=13, mask="context_readonly"), attention(q, k, v))


def test_cross_attention_shapes_and_mask_errors():
    q = torch.randn(1, 5, 2, 4)
    kv = torch.randn(1, 9, 2, 4)
    assert attention(q, kv, kv).shape == (1, 5, 2, 4)
    with pytest.raises(ValueError, match="self-attention mask"):
        attention(q, kv, kv, num_video=2, mask="context_readonly")
    with pytest.raises(ValueError, match="needs num_video"):
        attention(q, q, q, mask="context_readonly")
    with pytest.raises(ValueError, match="unknown attention mask"):
        attention(q, q, q, mask="causal")


def _fake_fused_module(monkeypatch, fused_attention=None, supports=None):
    fake = types.ModuleType("cinescene.kernels.attention")
    fake.fused_attention = fused_attention or (
        lambda q, k, v, num_video=None, mask="full": torch.zeros_like(q)
    )
    if supports is not None:
        fake.supports = supports
    monkeypatch.setitem(sys.modules, "cinescene.kernels.attention", fake)
    return fake


def test_fused_backend_is_called_with_the_agreed_signature(monkeypatch):
    calls = []

    def fused_attention(q, k, v, num_video=None, mask="full"):
        calls.append((tuple(q.shape), num_video, mask))
        return torch.zeros_like(q)

    _fake_fused_module(monkeypatch, fused_attention)
    q, k, v = qkv()
    out = attention(q, k, v, num_video=8, mask="context_readonly", backend="fused")
    assert calls == [((2, 13, 3, 8), 8, "context_readonly")] and torch.all(out == 0)
    # auto never picks it for CPU tensors
    attention(q, k, v, backend="auto")
    assert len(calls) == 1


def test_unavailable_backends_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cinescene.kernels.attention", None)  # import fails
    q, k, v = qkv()
    with pytest.raises(CineSceneError, match="fused"):
        attention(q, k, v, backend="fused")
    if attn_mod._load_flash() is None:
        with pytest.raises(CineSceneError, match="flash-attn"):
            attention(q, k, v, backend="flash")
    with pytest.raises(CineSceneError, match="unknown attention backend"):
        attention(q, k, v, backend="xformers")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def backend_log_lines():
    """The entry point's "attention backend" log lines while active (a list filled in place)."""
    # A handler on the logger itself: the cinescene tree may not propagate to pytest's caplog.
    logger = logging.getLogger("cinescene.models.attention")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    lines = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        lines += [m for m in handler.messages if "attention backend" in m]


def test_choice_is_logged_once():
    with backend_log_lines() as lines:
        q, k, v = qkv()
        for _ in range(3):
            attention(q, k, v)
    assert len(lines) == 1 and "sdpa" in lines[0]


class _Meta(types.SimpleNamespace):
    """Stands in for a tensor in ``resolve_backend``: only what the choice reads (device, dtype, shape)."""


def _on(device, dtype, length=64, head_dim=128):
    return _Meta(
        is_cuda=device == "cuda", device=torch.device(device), dtype=dtype, shape=(1, length, 12, head_dim)
    )


@pytest.mark.parametrize(
    "device,dtype,kind,fused_ok,flash,expected",
    [
        ("cuda", torch.bfloat16, "self", True, True, "fused"),
        ("cuda", torch.float16, "self", True, False, "fused"),
        ("cuda", torch.float32, "self", True, True, "sdpa"),  # fp32: IEEE dots, no tensor cores
        ("cuda", torch.float32, "self", True, False, "sdpa"),
        (
            "cuda",
            torch.bfloat16,
            "cross",
            True,
            True,
            "flash",
        ),  # short text keys: not what the kernel is tuned for
        ("cuda", torch.bfloat16, "cross", True, False, "sdpa"),
        ("cuda", torch.bfloat16, "self", False, True, "flash"),  # supports() says no (e.g. head dim 80)
        ("cuda", torch.bfloat16, "self", False, False, "sdpa"),
        ("cpu", torch.bfloat16, "self", True, True, "sdpa"),
    ],
)
def test_auto_picks_the_fused_kernel_only_where_it_is_meant_to_win(
    monkeypatch, device, dtype, kind, fused_ok, flash, expected
):
    asked = []

    def supports(q, k, v, num_video=None, mask="full"):
        asked.append(q.dtype)
        return fused_ok

    _fake_fused_module(monkeypatch, supports=supports)
    flash_module = types.ModuleType("flash_attn")
    flash_module.flash_attn_func = lambda q, k, v: q
    monkeypatch.setitem(sys.modules, "flash_attn", flash_module if flash else None)
    attn_mod.reset_backend_cache()
    q = _on(device, dtype)
    assert attn_mod.resolve_backend("auto", q, q, q, None, "full", kind) == expected
    if device == "cpu" or dtype == torch.float32 or kind == "cross":
        assert asked == []  # never even asked


def test_kind_decides_the_log_line_not_the_lengths():
    q, k, v = qkv()
    with backend_log_lines() as lines:
        attention(q, k, v, kind="cross")  # text as long as the video: still cross
        attention(q, k[:, :5], v[:, :5], kind="self")  # video queries over cached context keys
        attention(q, k, v)  # derived: equal lengths -> self (already logged)
        attention(q, k[:, :5], v[:, :5])  # derived: unequal lengths -> cross (already logged)
    assert len(lines) == 2
    assert lines[0].startswith("attention backend for cross-attention")
    assert lines[1].startswith("attention backend for self-attention")
    with pytest.raises(ValueError, match="unknown attention kind"):
        attention(q, k, v, kind="causal")


class _Layer(torch.nn.Module):
    """Self-attention under the readonly mask, then
    cross-attention to a shorter sequence: the model's calls."""

    def forward(self, x, text):
        hidden = attention(x, x * 0.5, x, num_video=7, mask="context_readonly")
        return attention(hidden, text, text, kind="cross")


def test_cold_torch_compile_fullgraph_through_the_entry_point():
    """A first call under torch.compile(fullgraph=True): no import or logging call may land in the graph."""
    torch._dynamo.reset()
    x = torch.randn(2, 11, 3, 8, requires_grad=True)
    text = torch.randn(2, 5, 3, 8)
    compiled = torch.compile(_Layer(), fullgraph=True, backend="aot_eager")
    out = compiled(x, text)
    out.square().sum().backward()
    grad = x.grad.clone()
    x_eager = x.detach().clone().requires_grad_()
    eager = _Layer()(x_eager, text)
    eager.square().sum().backward()
    assert torch.allclose(out, eager, atol=1e-6) and torch.allclose(grad, x_eager.grad, atol=1e-6)
    assert ("sdpa", "self") in attn_mod._logged and (
        "sdpa",
        "cross",
    ) in attn_mod._logged  # logged at trace time
    torch._dynamo.reset()
