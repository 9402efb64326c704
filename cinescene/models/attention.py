"""The one attention entry point: every attention layer (DiT self/cross, VGGT) calls it.

``attention(q, k, v, num_video=None, mask="full", backend="auto")`` with
q/k/v laid out (B, L, H, D) and the softmax scale 1/sqrt(D).

Masks over the extended sequence [video (num_video tokens) ++ context]:
``"full"`` lets every query see every key; ``"context_readonly"`` lets
queries at positions >= num_video see only keys >= num_video, while video
queries see everything. Without the fused kernel the readonly mask runs as two
dense calls (video queries over all keys, context queries over context keys),
so no (L, L) mask tensor is ever built and the masked block is never computed.

Backends, in the order ``"auto"`` tries them:
1. ``"fused"``: ``cinescene.kernels.attention.fused_attention(q, k, v,
   num_video=None, mask="full")`` (the kernels part; same layout). Used on
   CUDA tensors when the module imports and, if it defines
   ``supports(q, k, v, num_video=..., mask=...)``, that returns True.
2. ``"flash"``: flash-attn's ``flash_attn_func`` on CUDA fp16/bf16 tensors.
3. ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``.
``"math"`` is an explicit-matmul reference (FLOP counting, tests).
The backend first chosen for each kind of call is logged once.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Optional, Set, Tuple

import torch
import torch.nn.functional as F

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

BACKENDS = ("auto", "fused", "flash", "sdpa", "math")
MASKS = ("full", "context_readonly")

_log = get_logger("models.attention")
_logged: Set[Tuple[str, str]] = set()
_UNSET = object()
_fused_module = _UNSET
_flash_func = _UNSET


def _load_fused():
    """``cinescene.kernels.attention`` if it imports and provides ``fused_attention``, else None."""
    global _fused_module
    if _fused_module is _UNSET:
        try:
            module = importlib.import_module("cinescene.kernels.attention")
            _fused_module = module if callable(getattr(module, "fused_attention", None)) else None
        except ImportError:
            _fused_module = None
    return _fused_module


def _load_flash() -> Optional[Callable]:
    global _flash_func
    if _flash_func is _UNSET:
        try:
            from flash_attn import flash_attn_func  # type: ignore
            _flash_func = flash_attn_func
        except ImportError:
            _flash_func = None
    return _flash_func


def reset_backend_cache() -> None:
    """Forget the imported backends and the log-once state (tests swap modules in and out)."""
    global _fused_module, _flash_func
    _fused_module = _UNSET
    _flash_func = _UNSET
    _logged.clear()


def _fused_supports(module, q, k, v, num_video, mask) -> bool:
    check = getattr(module, "supports", None)
    return True if check is None else bool(check(q, k, v, num_video=num_video, mask=mask))


def resolve_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    num_video: Optional[int], mask: str) -> str:
    """The concrete backend for these tensors; raises CineSceneError when a named one cannot run."""
    if backend not in BACKENDS:
        raise CineSceneError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "fused":
        module = _load_fused()
        if module is None:
            raise CineSceneError("attention backend 'fused' needs cinescene.kernels.attention.fused_attention, "
                                 "which is not available; use model.attention.backend=auto")
        if not _fused_supports(module, q, k, v, num_video, mask):
            raise CineSceneError(f"the fused attention kernel does not support this call "
                                 f"(q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)}, mask {mask})")
        return "fused"
    if backend == "flash":
        if _load_flash() is None:
            raise CineSceneError("attention backend 'flash' needs the flash-attn package; "
                                 "install cinescene[gpu] or use model.attention.backend=auto")
        if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
            raise CineSceneError(f"flash-attn runs on CUDA fp16/bf16 tensors, got {q.device} {q.dtype}")
        return "flash"
    if backend in ("sdpa", "math"):
        return backend
    # auto
    if q.is_cuda:
        module = _load_fused()
        if module is not None and _fused_supports(module, q, k, v, num_video, mask):
            return "fused"
        if _load_flash() is not None and q.dtype in (torch.float16, torch.bfloat16):
            return "flash"
    return "sdpa"


def _dense(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked attention (B, Lq, H, D) x (B, Lk, H, D) on one of the dense backends."""
    if name == "flash":
        return _load_flash()(q, k, v)
    if name == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    # math: scores in fp32 for a trustworthy reference
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_video: Optional[int] = None,
              mask: str = "full", backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention over (B, L, H, D) tensors; returns (B, Lq, H, D)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects (B, L, H, D) tensors, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if mask not in MASKS:
        raise ValueError(f"unknown attention mask {mask!r}; expected one of {MASKS}")
    readonly = mask == "context_readonly"
    if readonly:
        if num_video is None:
            raise ValueError("mask='context_readonly' needs num_video")
        if q.shape[1] != k.shape[1]:
            raise ValueError("mask='context_readonly' is a self-attention mask (Lq must equal Lk)")
        if num_video >= q.shape[1]:  # no context tokens: nothing to mask
            readonly, mask = False, "full"
    name = resolve_backend(backend, q, k, v, num_video, mask)
    kind = "self" if q.shape[1] == k.shape[1] else "cross"
    if (name, kind) not in _logged:
        _logged.add((name, kind))
        _log.info("attention backend for %s-attention: %s (requested %s, %s)", kind, name, backend, q.device)
    if name == "fused":
        return _load_fused().fused_attention(q, k, v, num_video=num_video, mask=mask)
    if not readonly:
        return _dense(name, q, k, v)
    video_out = _dense(name, q[:, :num_video], k, v)
    context_out = _dense(name, q[:, num_video:], k[:, num_video:], v[:, num_video:])
    return torch.cat([video_out, context_out], dim=1)


def context_readonly_mask(seq_len: int, num_video: int, device=None) -> torch.Tensor:
    """Dense (L, L) boolean "may attend" mask equivalent to ``mask='context_readonly'`` (reference)."""
    allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)
    allowed[num_video:, :num_video] = False
    return allowed
