"""Padded-batch entry point ``fused_attention`` and the availability checks the model asks first."""

from __future__ import annotations

import importlib.util
import sys

import torch

from .config import SUPPORTED_HEAD_DIMS, interpreting
from .layout import default_scale

MASKS = ("full", "context_readonly")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernels_interpreted() -> bool | None:
    """How the already-imported kernels were built (interpreter or GPU JIT); None when not imported yet.

    Triton decides at decoration time (and the interpreter still reads
    ``TRITON_INTERPRET`` when it launches), so kernels built one way cannot
    run the other: :func:`is_available` needs both to agree.
    """
    module = sys.modules.get(__package__ + ".forward")
    if module is None:
        return None
    return type(module.attention_forward_kernel).__name__ == "InterpretedFunction"


def is_available(device=None) -> bool:
    """Whether the Triton kernels can run on ``device``:
    CUDA with triton, or any device in interpreter mode."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    built_interpreted = _kernels_interpreted()
    if device.type == "cuda":
        return torch.cuda.is_available()
    return interpreting() and built_interpreted in (None, True)


def require_available(device) -> None:
    """Raise RuntimeError (one line, saying what is missing)
    unless :func:`is_available` holds for ``device``."""
    if not is_available(device):
        raise RuntimeError(
            f"the Triton attention kernels cannot run on {device}: they need a CUDA GPU "
            "(or TRITON_INTERPRET=1 set before the kernels are first used)"
        )


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_dims: int) -> None:
    """Shapes, dtypes and devices the kernels accept; raises ValueError naming the first mismatch."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != token_dims + 2:
            layout = "(B, L, H, D)" if token_dims == 2 else "(total_tokens, H, D)"
            raise ValueError(f"fused attention expects {name} laid out {layout}, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"q, k, v must share dtype and device: {name} is {t.dtype} on {t.device}, "
                f"q is {q.dtype} on {q.device}"
            )
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"fused attention supports {SUPPORTED_DTYPES}, got {q.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-2:] != k.shape[-2:]:
        raise ValueError(
            f"q and k must agree on (heads, head_dim), got {tuple(q.shape[-2:])} and {tuple(k.shape[-2:])}"
        )
    if token_dims == 2 and q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have one batch size, got {q.shape[0]} and {k.shape[0]}")
    if k.shape[-3] == 0 and q.shape[-3] > 0:
        raise ValueError("attention over zero keys is undefined (softmax of an empty set)")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"fused attention supports head dims {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}")


def supports(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_video: int | None = None, mask: str = "full"
) -> bool:
    """True when :func:`fused_attention` can run this call
    (the model falls back to flash-attn / SDPA otherwise)."""
    try:
        check_inputs(q, k, v, token_dims=2)
        _effective_num_video(q.shape[1], k.shape[1], num_video, mask)
    except ValueError:
        return False
    return is_available(q.device)


def _effective_num_video(seqlen_q: int, seqlen_k: int, num_video: int | None, mask: str) -> int | None:
    """The context start the kernel should mask at, or None when the call is effectively unmasked."""
    if mask not in MASKS:
        raise ValueError(f"unknown attention mask {mask!r}; expected one of {MASKS}")
    if mask == "full":
        return None
    if num_video is None or num_video < 0:
        raise ValueError(f"mask='context_readonly' needs num_video >= 0, got {num_video}")
    if num_video >= seqlen_q:  # no context queries: nothing is masked
        return None
    if num_video >= seqlen_k:
        raise ValueError(
            f"context queries (from position {num_video}) would see no key: only {seqlen_k} keys"
        )
    return int(num_video)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels need unit stride along D only; any (B, L, H) strides are passed through."""
    return t if t.stride(-1) == 1 else t.contiguous()


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_video: int | None = None,
    mask: str = "full",
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention over (B, L, H, D) tensors with the Triton kernels; returns (B, Lq, H, D).

    ``mask="context_readonly"``: queries at positions >= ``num_video`` see only
    keys >= ``num_video`` (the key blocks they may not see are skipped, not
    computed and discarded); video queries see every key. Differentiable in
    q, k and v; usable under ``torch.compile`` (a custom op).
    """
    check_inputs(q, k, v, token_dims=2)
    context = _effective_num_video(q.shape[1], k.shape[1], num_video, mask)
    require_available(q.device)
    scale = default_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    if q.numel() == 0:  # nothing to launch; clone keeps the result in q's autograd graph
        return q.clone()
    from .op import attention_forward_op

    out, _ = attention_forward_op(
        last_dim_contiguous(q),
        last_dim_contiguous(k),
        last_dim_contiguous(v),
        None,
        None,
        None,
        q.shape[1],
        k.shape[1],
        context or 0,
        context is not None,
        scale,
    )
    return out
