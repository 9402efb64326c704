"""Packed variable-length entry point: sequences of different lengths in one launch, no padding.

Samples with different numbers of scene images have different context
lengths; packing them as (total_tokens, H, D) with int32 cumulative lengths
(the flash-attn varlen convention) avoids computing attention over padding.
Each sequence may have its own context start (its number of video tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .api import check_inputs, last_dim_contiguous, require_available
from .layout import default_scale

ContextStart = torch.Tensor | Sequence[int] | None


def pack_sequences(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """[(L_i, H, D), ...] -> (packed (sum L_i, H, D), cu_seqlens int32 (n + 1,), max L_i)."""
    if not sequences:
        raise ValueError("pack_sequences needs at least one sequence")
    lengths = torch.tensor([s.shape[0] for s in sequences], dtype=torch.int32)
    cu_seqlens = torch.zeros(len(sequences) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    return torch.cat(list(sequences), dim=0), cu_seqlens.to(sequences[0].device), int(lengths.max())


def unpack_sequences(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    bounds = cu_seqlens.tolist()
    return [packed[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


def _check_cu_seqlens(name: str, cu_seqlens: torch.Tensor, total: int, max_seqlen: int, device) -> None:
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D int32 tensor of cumulative lengths (batch + 1 entries)")
    if cu_seqlens.device != device:
        raise ValueError(f"{name} is on {cu_seqlens.device}, the tensors on {device}")
    if cu_seqlens.device.type == "cpu":  # checking a GPU tensor would cost a sync on every call
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if int(cu_seqlens[0]) != 0 or bool((lengths < 0).any()) or int(cu_seqlens[-1]) > total:
            raise ValueError(
                f"{name} must start at 0, not decrease, and end within the {total} packed tokens"
            )
        if int(lengths.max()) > max_seqlen:
            raise ValueError(
                f"{name} holds a sequence of {int(lengths.max())} tokens, longer than max_seqlen {max_seqlen}"
            )


def fused_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    context_start: ContextStart = None,
    mask: str | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Attention over packed sequences: q (total_q, H, D), k/v (total_k, H, D) -> (total_q, H, D).

    ``context_start[i]``: position (within sequence i) of its first context
    token; queries from there on see only keys from there on. ``mask`` defaults
    to ``"context_readonly"`` when ``context_start`` is given, else ``"full"``.
    A sequence whose context start is at or past its query length has no
    context queries; keys of a sequence sit at the same positions as its queries.
    """
    check_inputs(q, k, v, token_dims=1)
    mask = mask or ("context_readonly" if context_start is not None else "full")
    if mask not in ("full", "context_readonly"):
        raise ValueError(f"unknown attention mask {mask!r}")
    readonly = mask == "context_readonly"
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q.device)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q.device)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must describe the same number of sequences")
    starts = None
    if readonly:
        if context_start is None:
            raise ValueError("mask='context_readonly' needs context_start (one entry per sequence)")
        starts = torch.as_tensor(context_start, dtype=torch.int32, device=q.device).reshape(-1)
        if starts.shape[0] != cu_seqlens_q.shape[0] - 1:
            raise ValueError(
                f"context_start has {starts.shape[0]} entries for {cu_seqlens_q.shape[0] - 1} sequences"
            )
        if starts.device.type == "cpu" and bool((starts < 0).any()):
            raise ValueError("context_start entries must be >= 0")
    elif context_start is not None:
        raise ValueError("context_start is only meaningful with mask='context_readonly'")
    require_available(q.device)
    if q.numel() == 0:
        return q.clone()
    scale = default_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    from .op import attention_forward_op

    out, _ = attention_forward_op(
        last_dim_contiguous(q),
        last_dim_contiguous(k),
        last_dim_contiguous(v),
        cu_seqlens_q,
        cu_seqlens_k,
        starts,
        int(max_seqlen_q),
        int(max_seqlen_k),
        0,
        readonly,
        scale,
    )
    return out
