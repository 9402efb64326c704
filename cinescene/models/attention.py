"""The one attention entry point: every attention layer (DiT self/cross, VGGT) calls it.

``attention(q, k, v, num_video=None, mask="full", backend="auto", kind=None)``
with q/k/v laid out (B, L, H, D) and the softmax scale 1/sqrt(D).

Masks over the extended sequence [video (num_video tokens) ++ context]:
``"full"`` lets every query see every key; ``"context_readonly"`` lets
queries at positions >= num_video see only keys >= num_video, while video
queries see everything. Without the fused kernel the readonly mask runs as two
dense calls (video queries over all keys, context queries over context keys),
so no (L, L) mask tensor is ever built and the masked block is never computed.

Backends:
1. ``"fused"``: ``cinescene.kernels.attention.fused_attention(q, k, v,
   num_video=None, mask="full")`` (the kernels part; same layout).
2. ``"flash"``: flash-attn's ``flash_attn_func`` on CUDA fp16/bf16 tensors.
3. ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``.
``"math"`` is an explicit-matmul reference (FLOP counting, tests).

``"auto"`` picks the fused kernel only where it is built to win: self-attention
over the extended sequence on CUDA in fp16/bf16, when the kernels module's
``supports(q, k, v, num_video=..., mask=...)`` accepts the call (head dims it
compiles for, triton present). Elsewhere it is not the better choice: in fp32
its dots are IEEE fp32 (no tensor cores), and cross-attention to the 512 text
tokens is a short-key problem the long-sequence tiles are not tuned for. Then
flash-attn (CUDA fp16/bf16), then SDPA. The backend first chosen for each kind
of call (self/cross) is logged once.

``kind`` ("self" or "cross") says which the call is. Left None it is derived:
"self" when ``num_video`` is given or the lengths agree, else "cross"; a
cross-attention whose text is exactly as long as the video would be taken for
self-attention, so callers that know should pass it.

Under ``torch.compile``: the backend modules are imported, and the choice
logged, by functions dynamo runs once at trace time
(``torch.compiler.assume_constant_result``), so a cold
``torch.compile(fullgraph=True)`` traces through this entry point without an
import or a logging call inside the graph.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .packing import TokenPacking

BACKENDS = ("auto", "fused", "flash", "sdpa", "math")
MASKS = ("full", "context_readonly")
KINDS = ("self", "cross")
HALF_DTYPES = (torch.float16, torch.bfloat16)

_log = get_logger("models.attention")
_logged: set[tuple[str, str]] = set()
_UNSET = object()
_fused_module = _UNSET
_flash_func = _UNSET


def _load_fused():
    """``cinescene.kernels.attention`` if it imports and provides ``fused_attention``, else None."""
    global _fused_module
    if _fused_module is _UNSET:
        try:
            # import_module returns sys.modules' entry (tests swap a fake in there); a plain
            # ``import a.b.c`` would return the attribute of the already-imported parent package.
            module = importlib.import_module("cinescene.kernels.attention")
            _fused_module = module if callable(getattr(module, "fused_attention", None)) else None
        except ImportError:
            _fused_module = None
    return _fused_module


def _load_flash() -> Callable | None:
    global _flash_func
    if _flash_func is _UNSET:
        try:
            from flash_attn import flash_attn_func  # type: ignore

            _flash_func = flash_attn_func
        except ImportError:
            _flash_func = None
    return _flash_func


@torch.compiler.assume_constant_result
def _fused_importable() -> bool:
    return _load_fused() is not None


@torch.compiler.assume_constant_result
def _flash_importable() -> bool:
    return _load_flash() is not None


@torch.compiler.assume_constant_result
def _log_choice(name: str, kind: str, requested: str, device: str) -> bool:
    """Log the first choice per (backend, kind); True when this call logged."""
    if (name, kind) in _logged:
        return False
    _logged.add((name, kind))
    _log.info("attention backend for %s-attention: %s (requested %s, %s)", kind, name, requested, device)
    return True


def reset_backend_cache() -> None:
    """Forget the imported backends and the log-once state (tests swap modules in and out)."""
    global _fused_module, _flash_func
    _fused_module = _UNSET
    _flash_func = _UNSET
    _logged.clear()


def _fused_supports(q, k, v, num_video, mask) -> bool:
    check = getattr(_fused_module, "supports", None)
    return True if check is None else bool(check(q, k, v, num_video=num_video, mask=mask))


def resolve_backend(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_video: int | None,
    mask: str,
    kind: str = "self",
) -> str:
    """The concrete backend for these tensors; raises CineSceneError when a named one cannot run."""
    if backend not in BACKENDS:
        raise CineSceneError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "fused":
        if not _fused_importable():
            raise CineSceneError(
                "attention backend 'fused' needs cinescene.kernels.attention.fused_attention, "
                "which is not available; use model.attention.backend=auto"
            )
        if not _fused_supports(q, k, v, num_video, mask):
            raise CineSceneError(
                f"the fused attention kernel does not support this call "
                f"(q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)}, mask {mask})"
            )
        return "fused"
    if backend == "flash":
        if not _flash_importable():
            raise CineSceneError(
                "attention backend 'flash' needs the flash-attn package; "
                "install cinescene[gpu] or use model.attention.backend=auto"
            )
        if not q.is_cuda or q.dtype not in HALF_DTYPES:
            raise CineSceneError(f"flash-attn runs on CUDA fp16/bf16 tensors, got {q.device} {q.dtype}")
        return "flash"
    if backend in ("sdpa", "math"):
        return backend
    # auto: see the module docstring for why each condition
    if q.is_cuda and q.dtype in HALF_DTYPES:
        if kind == "self" and _fused_importable() and _fused_supports(q, k, v, num_video, mask):
            return "fused"
        if _flash_importable():
            return "flash"
    return "sdpa"


def _dense(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked attention (B, Lq, H, D) x (B, Lk, H, D) on one of the dense backends."""
    if name == "flash":
        return _flash_func(q, k, v)
    if name == "sdpa":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    # math: scores in fp32 for a trustworthy reference
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.float()).to(q.dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_video: int | None = None,
    mask: str = "full",
    backend: str = "auto",
    kind: str | None = None,
    packing: TokenPacking | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over (B, L, H, D) tensors; returns (B, Lq, H, D).

    ``packing`` (a :class:`~cinescene.models.packing.TokenPacking` of the key
    positions) marks padding: no query sees a padding key, the queries (the
    first Lq key positions) that are padding get zeros, and the call runs per
    sequence over real tokens only (the fused kernel's varlen launch, else one
    dense call per sample). ``num_video`` then counts padded positions; each
    sequence's context starts after its real tokens before ``num_video``.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects (B, L, H, D) tensors, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if mask not in MASKS:
        raise ValueError(f"unknown attention mask {mask!r}; expected one of {MASKS}")
    if kind is None:
        kind = "self" if num_video is not None or q.shape[1] == k.shape[1] else "cross"
    elif kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {KINDS}")
    readonly = mask == "context_readonly"
    if readonly:
        if num_video is None:
            raise ValueError("mask='context_readonly' needs num_video")
        if q.shape[1] != k.shape[1]:
            raise ValueError("mask='context_readonly' is a self-attention mask (Lq must equal Lk)")
        if num_video >= q.shape[1]:  # no context tokens: nothing to mask
            readonly, mask = False, "full"
    name = resolve_backend(backend, q, k, v, num_video, mask, kind)
    _log_choice(name, kind, backend, q.device.type)
    if packing is not None:
        return _attend_packed(name, q, k, v, packing, num_video if readonly else None)
    if name == "fused":
        return _fused_module.fused_attention(q, k, v, num_video=num_video, mask=mask)
    return _attend_padded(name, q, k, v, num_video if readonly else None)


def _attend_padded(
    name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context_start: int | None
) -> torch.Tensor:
    """A dense backend over every token; ``context_start`` set: the readonly mask as two dense calls."""
    if context_start is None or context_start >= q.shape[1]:
        return _dense(name, q, k, v)
    video_out = _dense(name, q[:, :context_start], k, v)
    context_out = _dense(name, q[:, context_start:], k[:, context_start:], v[:, context_start:])
    return torch.cat([video_out, context_out], dim=1)


def _attend_packed(
    name: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    packing: TokenPacking,
    num_video: int | None,
) -> torch.Tensor:
    """Attention over the real tokens only (see :mod:`cinescene.models.packing`); ``num_video``: readonly."""
    packing.check(k)
    queries = packing.prefix(q.shape[1])
    q_packed, k_packed, v_packed = queries.pack(q), packing.pack(k), packing.pack(v)
    if name == "fused":
        out = _fused_module.fused_attention_varlen(
            q_packed,
            k_packed,
            v_packed,
            queries.cu_seqlens,
            packing.cu_seqlens,
            queries.max_seqlen,
            packing.max_seqlen,
            context_start=None if num_video is None else packing.context_starts(num_video),
            mask="full" if num_video is None else "context_readonly",
        )
    else:
        starts = packing.real_before(num_video) if num_video is not None else None
        outs = []
        for i, (qi, ki, vi) in enumerate(
            zip(queries.split(q_packed), packing.split(k_packed), packing.split(v_packed))
        ):
            if qi.shape[0] == 0:
                outs.append(qi)
                continue
            outs.append(_attend_padded(name, qi[None], ki[None], vi[None], starts[i] if starts else None)[0])
        out = torch.cat(outs, dim=0)
    return queries.unpack(out)


@dataclass(frozen=True)
class SelfAttentionCall:
    """How one forward's blocks run self-attention over [video ++ context]: ``(q, k, v) -> out``.

    An object rather than a closure so that wrappers (the inference context
    cache) can read what the call is bound to, e.g. its ``packing``.
    """

    num_video: int | None
    mask: str = "full"
    backend: str = "auto"
    packing: TokenPacking | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(
            q,
            k,
            v,
            num_video=self.num_video,
            mask=self.mask,
            backend=self.backend,
            kind="self",
            packing=self.packing,
        )
