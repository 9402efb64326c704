"""The kernels as torch custom ops (``cinescene::attention_forward`` / ``_backward``) with autograd.

Registered through ``torch.library.custom_op`` so that ``torch.compile``
treats each call as one opaque node (the fake implementations give it the
output shapes) instead of tracing into Triton launches, and so that autograd
comes from ``register_autograd`` rather than a Python ``autograd.Function``
that dynamo would have to inline. One op pair serves the padded and the
packed layout: the packed one passes ``cu_seqlens_*`` (and ``context_start``
under the readonly mask), the padded one passes None.
"""

from __future__ import annotations

import torch
from torch import Tensor

_NAMESPACE = "cinescene"


def _problem(
    q: Tensor,
    k: Tensor,
    cu_seqlens_q: Tensor | None,
    cu_seqlens_k: Tensor | None,
    context_start: Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_video: int,
    readonly: bool,
    softmax_scale: float,
):
    from .layout import Problem

    if cu_seqlens_q is not None:
        batch, heads, head_dim = cu_seqlens_q.shape[0] - 1, q.shape[1], q.shape[2]
    else:
        batch, heads, head_dim = q.shape[0], q.shape[2], q.shape[3]
    return Problem(
        batch=batch,
        heads=heads,
        head_dim=head_dim,
        seqlen_q=max_seqlen_q,
        seqlen_k=max_seqlen_k,
        softmax_scale=softmax_scale,
        readonly=readonly,
        num_video=num_video,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        context_start=context_start if readonly else None,
    )


def _row_stat_shape(q: Tensor, varlen: bool, max_seqlen_q: int) -> tuple[int, ...]:
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], max_seqlen_q)


@torch.library.custom_op(f"{_NAMESPACE}::attention_forward", mutates_args=())
def attention_forward_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor | None,
    cu_seqlens_k: Tensor | None,
    context_start: Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_video: int,
    readonly: bool,
    softmax_scale: float,
) -> tuple[Tensor, Tensor]:
    """(out, lse): out like q, lse fp32 (B, H, Lq) or (H, total_q), base-2 over the scaled scores."""
    from .forward import attention_forward

    problem = _problem(
        q,
        k,
        cu_seqlens_q,
        cu_seqlens_k,
        context_start,
        max_seqlen_q,
        max_seqlen_k,
        num_video,
        readonly,
        softmax_scale,
    )
    return attention_forward(q, k, v, problem)


@attention_forward_op.register_fake
def _(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    context_start,
    max_seqlen_q,
    max_seqlen_k,
    num_video,
    readonly,
    softmax_scale,
):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(_row_stat_shape(q, cu_seqlens_q is not None, max_seqlen_q), dtype=torch.float32)
    return out, lse


@torch.library.custom_op(f"{_NAMESPACE}::attention_backward", mutates_args=())
def attention_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    cu_seqlens_q: Tensor | None,
    cu_seqlens_k: Tensor | None,
    context_start: Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    num_video: int,
    readonly: bool,
    softmax_scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    from .backward import attention_backward

    problem = _problem(
        q,
        k,
        cu_seqlens_q,
        cu_seqlens_k,
        context_start,
        max_seqlen_q,
        max_seqlen_k,
        num_video,
        readonly,
        softmax_scale,
    )
    return attention_backward(grad_out, q, k, v, out, lse, problem)


@attention_backward_op.register_fake
def _(
    grad_out,
    q,
    k,
    v,
    out,
    lse,
    cu_seqlens_q,
    cu_seqlens_k,
    context_start,
    max_seqlen_q,
    max_seqlen_k,
    num_video,
    readonly,
    softmax_scale,
):
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


_SHAPE_ARGS = (
    "cu_seqlens_q",
    "cu_seqlens_k",
    "context_start",
    "max_seqlen_q",
    "max_seqlen_k",
    "num_video",
    "readonly",
    "softmax_scale",
)


def _setup_context(ctx, inputs, output):
    q, k, v, *shape_args = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    cu_q, cu_k, context_start = shape_args[:3]
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, context_start)
    ctx.shape_args = shape_args[3:]


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_q, cu_k, context_start = ctx.saved_tensors
    dq, dk, dv = attention_backward_op(
        grad_out, q, k, v, out, lse, cu_q, cu_k, context_start, *ctx.shape_args
    )
    return (dq, dk, dv) + (None,) * len(_SHAPE_ARGS)


attention_forward_op.register_autograd(_backward, setup_context=_setup_context)
