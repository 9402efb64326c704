"""How one attention call is laid out in memory: padded batch or packed varlen, mask, scale.

The kernels take raw strides; :class:`Problem` turns tensors into those
arguments once, so the forward and the backward launchers agree on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Problem:
    """The shape and mask of one call.

    Padded layout: q (B, Lq, H, D), k/v (B, Lk, H, D), ``num_video`` shared by
    the batch. Packed layout: q (total_q, H, D), k/v (total_k, H, D),
    ``cu_seqlens_*`` int32 (B + 1,), ``context_start`` int32 (B,) or None, and
    ``seqlen_*`` the maxima over the batch.
    """

    batch: int
    heads: int
    head_dim: int
    seqlen_q: int
    seqlen_k: int
    softmax_scale: float
    readonly: bool = False
    num_video: int = 0
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    context_start: torch.Tensor | None = None

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def qk_scale(self) -> float:
        """Scale applied to q·k so the softmax runs in base 2 (``exp2`` is one MUFU op, ``exp`` is two)."""
        return self.softmax_scale * LOG2E

    def token_strides(self, t: torch.Tensor) -> tuple[int, int, int]:
        """(batch, token, head) strides; the packed layout
        has no batch stride (starts come from cu_seqlens)."""
        if self.varlen:
            return 0, t.stride(0), t.stride(1)
        return t.stride(0), t.stride(1), t.stride(2)

    def row_stat_shape(self, q: torch.Tensor) -> tuple[int, ...]:
        """Shape of the per-query fp32 statistics (log-sum-exp, delta): (B, H, Lq) or (H, total_q)."""
        if self.varlen:
            return (self.heads, q.shape[0])
        return (self.batch, self.heads, self.seqlen_q)

    def row_stat_strides(self, stat: torch.Tensor) -> tuple[int, int]:
        if self.varlen:
            return 0, stat.stride(0)
        return stat.stride(0), stat.stride(1)

    def sequence_args(self) -> dict:
        """Arguments of :func:`tiles.sequence_bounds` plus the autotuner's length buckets."""
        from .config import seqlen_bucket

        return dict(
            cu_seqlens_q=self.cu_seqlens_q,
            cu_seqlens_k=self.cu_seqlens_k,
            context_start=self.context_start,
            num_heads=self.heads,
            seqlen_q=self.seqlen_q,
            seqlen_k=self.seqlen_k,
            num_video=self.num_video,
            seqlen_bucket_q=seqlen_bucket(self.seqlen_q),
            seqlen_bucket_k=seqlen_bucket(self.seqlen_k),
            HEAD_DIM=self.head_dim,
            VARLEN=self.varlen,
            READONLY=self.readonly,
        )


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def dot_settings(dtype: torch.dtype, device: torch.device) -> dict:
    """Per-dtype constexprs: fp32 inputs keep IEEE products (no silent TF32 on GPU); bf16 under the
    interpreter is upcast to fp32 before ``tl.dot`` (the interpreter's bf16 dot returns garbage)."""
    from .config import interpreting

    return dict(
        INPUT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
        UPCAST=bool(dtype == torch.bfloat16 and (interpreting() or device.type == "cpu")),
    )
