"""Forward kernel: FlashAttention-2 style online softmax over key blocks, fp32 accumulation.

Each program owns one BLOCK_M tile of queries of one (sequence, head), keeps
it in registers, and streams key/value tiles through it. Scores are scaled by
``softmax_scale * log2(e)`` and exponentiated with ``exp2``; the running max
and sum are rescaled once per key block. The per-row log-sum-exp (base 2, in
units of the scaled scores) is saved for the backward pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import Tiles, launch
from .layout import Problem, dot_settings
from .tiles import allowed_pairs, key_block_ranges, sequence_bounds, token_base


@triton.jit
def _attend_key_blocks(
    acc,
    row_sum,
    row_max,
    visited,
    q,
    k_seq,
    v_seq,
    stride_kl,
    stride_vl,
    offs_m,
    start,
    stop,
    q_len,
    k_len,
    ctx,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    READONLY: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Fold key blocks [start, stop) into the running (acc, row_sum, row_max) of one query tile."""
    offs_d = tl.arange(0, HEAD_DIM)
    for n_start in range(start, stop, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        kt_ptrs = k_seq + offs_n[None, :] * stride_kl + offs_d[:, None]  # K^T tile (D, BLOCK_N)
        v_ptrs = v_seq + offs_n[:, None] * stride_vl + offs_d[None, :]  # V tile (BLOCK_N, D)
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < k_len, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < k_len, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, kt, input_precision=INPUT_PRECISION)
        if MASKED:
            keep = allowed_pairs(offs_m[:, None], offs_n[None, :], q_len, k_len, ctx, READONLY)
            scores = tl.where(keep, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1) * qk_scale)
        if MASKED:
            # A row whose keys so far are all masked keeps max -inf: subtract 0 instead so
            # exp2(-inf - -inf) never produces NaN (its p and correction are then 0).
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        else:
            shift = new_max
        p = tl.math.exp2(scores * qk_scale - shift[:, None])
        correction = tl.math.exp2(row_max - shift)
        row_sum = row_sum * correction + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None], input_precision=INPUT_PRECISION)
        row_max = new_max
        visited += 1
    return acc, row_sum, row_max, visited


@triton.jit
def attention_forward_kernel(
    q,
    k,
    v,
    out,
    lse,
    cu_seqlens_q,
    cu_seqlens_k,
    context_start,
    block_counts,
    stride_qb,
    stride_ql,
    stride_qh,
    stride_kb,
    stride_kl,
    stride_kh,
    stride_vb,
    stride_vl,
    stride_vh,
    stride_ob,
    stride_ol,
    stride_oh,
    stride_lse_b,
    stride_lse_h,
    num_heads,
    seqlen_q,
    seqlen_k,
    num_video,
    qk_scale,
    seqlen_bucket_q,
    seqlen_bucket_k,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    VARLEN: tl.constexpr,
    READONLY: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    COUNT_BLOCKS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    q_start, q_len, k_start, k_len, ctx = sequence_bounds(
        batch, cu_seqlens_q, cu_seqlens_k, context_start, seqlen_q, seqlen_k, num_video, VARLEN, READONLY
    )
    m_start = pid_m * BLOCK_M
    if m_start >= q_len:  # packed batches launch for the longest sequence
        return

    q_seq = token_base(q, batch, head, q_start, stride_qb, stride_qh, stride_ql)
    k_seq = token_base(k, batch, head, k_start, stride_kb, stride_kh, stride_kl)
    v_seq = token_base(v, batch, head, k_start, stride_vb, stride_vh, stride_vl)

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_tile = tl.load(
        q_seq + offs_m[:, None] * stride_ql + offs_d[None, :], mask=offs_m[:, None] < q_len, other=0.0
    )
    if UPCAST:
        q_tile = q_tile.to(tl.float32)

    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    visited = 0
    lo, a, b, hi = key_block_ranges(m_start, q_len, k_len, ctx, BLOCK_M, BLOCK_N, READONLY)
    acc, row_sum, row_max, visited = _attend_key_blocks(
        acc,
        row_sum,
        row_max,
        visited,
        q_tile,
        k_seq,
        v_seq,
        stride_kl,
        stride_vl,
        offs_m,
        lo,
        a,
        q_len,
        k_len,
        ctx,
        qk_scale,
        HEAD_DIM,
        BLOCK_N,
        True,
        READONLY,
        UPCAST,
        INPUT_PRECISION,
    )
    acc, row_sum, row_max, visited = _attend_key_blocks(
        acc,
        row_sum,
        row_max,
        visited,
        q_tile,
        k_seq,
        v_seq,
        stride_kl,
        stride_vl,
        offs_m,
        a,
        b,
        q_len,
        k_len,
        ctx,
        qk_scale,
        HEAD_DIM,
        BLOCK_N,
        False,
        READONLY,
        UPCAST,
        INPUT_PRECISION,
    )
    acc, row_sum, row_max, visited = _attend_key_blocks(
        acc,
        row_sum,
        row_max,
        visited,
        q_tile,
        k_seq,
        v_seq,
        stride_kl,
        stride_vl,
        offs_m,
        b,
        hi,
        q_len,
        k_len,
        ctx,
        qk_scale,
        HEAD_DIM,
        BLOCK_N,
        True,
        READONLY,
        UPCAST,
        INPUT_PRECISION,
    )

    # Rows that saw no key at all (only possible for degenerate packed inputs) yield 0, and a
    # log-sum-exp of +inf so the backward gives them p = 0 instead of NaN.
    safe_sum = tl.where(row_sum == 0.0, 1.0, row_sum)
    out_tile = acc / safe_sum[:, None]
    row_lse = tl.where(row_max == float("-inf"), float("inf"), row_max + tl.math.log2(safe_sum))

    o_seq = token_base(out, batch, head, q_start, stride_ob, stride_oh, stride_ol)
    tl.store(
        o_seq + offs_m[:, None] * stride_ol + offs_d[None, :],
        out_tile.to(out.dtype.element_ty),
        mask=offs_m[:, None] < q_len,
    )
    lse_seq = token_base(lse, batch, head, q_start, stride_lse_b, stride_lse_h, 1)
    tl.store(lse_seq + offs_m, row_lse, mask=offs_m < q_len)
    if COUNT_BLOCKS:
        tl.store(block_counts + pid_bh * tl.num_programs(0) + pid_m, visited)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    problem: Problem,
    *,
    tiles: Tiles | None = None,
    block_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel: returns (out like q, log2-sum-exp fp32 of :meth:`Problem.row_stat_shape`).

    ``block_counts`` (int32, B*H*num_query_blocks, zeroed) receives the number
    of key blocks each program visited: the probe the tests use to check that
    masked blocks are skipped. It needs explicit ``tiles``.
    """
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(problem.row_stat_shape(q), device=q.device, dtype=torch.float32)
    sqb, sql, sqh = problem.token_strides(q)
    skb, skl, skh = problem.token_strides(k)
    svb, svl, svh = problem.token_strides(v)
    sob, sol, soh = problem.token_strides(out)
    slb, slh = problem.row_stat_strides(lse)
    args = dict(
        q=q,
        k=k,
        v=v,
        out=out,
        lse=lse,
        block_counts=block_counts,
        stride_qb=sqb,
        stride_ql=sql,
        stride_qh=sqh,
        stride_kb=skb,
        stride_kl=skl,
        stride_kh=skh,
        stride_vb=svb,
        stride_vl=svl,
        stride_vh=svh,
        stride_ob=sob,
        stride_ol=sol,
        stride_oh=soh,
        stride_lse_b=slb,
        stride_lse_h=slh,
        qk_scale=problem.qk_scale,
        COUNT_BLOCKS=block_counts is not None,
        **problem.sequence_args(),
        **dot_settings(q.dtype, q.device),
    )
    if block_counts is not None and tiles is None:
        raise ValueError("block_counts needs explicit tiles (the count layout depends on BLOCK_M)")
    bh = problem.batch * problem.heads
    launch(
        attention_forward_kernel,
        "forward",
        lambda block_m, block_n: (triton.cdiv(problem.seqlen_q, block_m), bh),
        args,
        head_dim=problem.head_dim,
        tiles=tiles,
    )
    return out, lse
