"""Plain softmax attention in float64: the ground truth every kernel test compares against.

Deliberately naive (explicit scores, a dense boolean mask, one sequence at a
time for packed inputs) so that it is obviously right; it is only run at test
and benchmark-check sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def readonly_allowed(
    query_positions: torch.Tensor, key_positions: torch.Tensor, num_video: int
) -> torch.Tensor:
    """The context-readonly rule: (len(queries), len(keys)) bool, query i may see key j iff i < num_video
    or j >= num_video. Every dense form of the mask (reference, model, benchmark, tests) is this function."""
    return (query_positions[:, None] < num_video) | (key_positions[None, :] >= num_video)


def readonly_mask(seqlen_q: int, seqlen_k: int, num_video: int, device=None) -> torch.Tensor:
    """(Lq, Lk) bool "may attend" of the readonly mask over whole sequences."""
    return readonly_allowed(
        torch.arange(seqlen_q, device=device), torch.arange(seqlen_k, device=device), num_video
    )


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_video: int | None = None,
    mask: str = "full",
    softmax_scale: float | None = None,
    query_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (B, Lq, H, D), k/v (B, Lk, H, D) -> (B, Lq, H, D) float64.

    ``query_positions`` (Lq,): the sequence positions of q's rows when q holds
    a sample of a longer sequence's queries (the benchmark's error check);
    default 0..Lq-1. Rows that may see no key (possible only for degenerate
    masks) are 0, the convention of the fused kernel.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    qd, kd, vd = q.double(), k.double(), v.double()
    scores = torch.einsum("bqhd,bkhd->bhqk", qd, kd) * scale
    if mask == "context_readonly":
        if num_video is None:
            raise ValueError("mask='context_readonly' needs num_video")
        if query_positions is None:
            query_positions = torch.arange(q.shape[1], device=q.device)
        allowed = readonly_allowed(query_positions, torch.arange(k.shape[1], device=q.device), num_video)
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif mask != "full":
        raise ValueError(f"unknown mask {mask!r}")
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs, vd)


def reference_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    context_start: Sequence[int] | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Packed q (total_q, H, D), k/v (total_k, H, D): each sequence on its own; float64 output."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs = []
    for i in range(len(cq) - 1):
        qi, ki, vi = (
            t.unsqueeze(0) for t in (q[cq[i] : cq[i + 1]], k[ck[i] : ck[i + 1]], v[ck[i] : ck[i + 1]])
        )
        if context_start is None:
            out = reference_attention(qi, ki, vi, softmax_scale=softmax_scale)
        else:
            out = reference_attention(
                qi,
                ki,
                vi,
                num_video=int(context_start[i]),
                mask="context_readonly",
                softmax_scale=softmax_scale,
            )
        outs.append(out[0])
    return torch.cat(outs, dim=0)
