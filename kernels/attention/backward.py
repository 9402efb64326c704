"""Backward kernels: delta preprocess, then dK/dV and dQ in two atomic-free kernels.

With P = softmax(S), dP = dO V^T and delta = rowsum(dO * O) = rowsum(P * dP),
the score gradient is dS = P * (dP - delta). P is recomputed tile by tile from
the saved log2-sum-exp, never stored. The dK/dV kernel owns a key tile and
walks query tiles (dV += P^T dO, dK += dS^T Q); the dQ kernel owns a query
tile and walks key tiles (dQ += dS K). Each output tile is written by exactly
one program, so there are no atomics and the result is deterministic, at the
cost of computing Q K^T and dO V^T twice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import Tiles, launch
from .layout import Problem, dot_settings
from .tiles import allowed_pairs, key_block_ranges, query_block_ranges, sequence_bounds, token_base

PREPROCESS_BLOCK_M = 64


@triton.jit
def attention_backward_delta_kernel(
    out,
    grad_out,
    delta,
    cu_seqlens_q,
    stride_ob,
    stride_ol,
    stride_oh,
    stride_gb,
    stride_gl,
    stride_gh,
    stride_stat_b,
    stride_stat_h,
    num_heads,
    seqlen_q,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """delta = rowsum(dO * O) in fp32, one value per (query, head)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    q_start, q_len, _, _, _ = sequence_bounds(
        batch, cu_seqlens_q, cu_seqlens_q, None, seqlen_q, seqlen_q, 0, VARLEN, False
    )
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] < q_len
    o = tl.load(
        token_base(out, batch, head, q_start, stride_ob, stride_oh, stride_ol)
        + offs_m[:, None] * stride_ol
        + offs_d[None, :],
        mask=rows,
        other=0.0,
    )
    do = tl.load(
        token_base(grad_out, batch, head, q_start, stride_gb, stride_gh, stride_gl)
        + offs_m[:, None] * stride_gl
        + offs_d[None, :],
        mask=rows,
        other=0.0,
    )
    row_delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(
        token_base(delta, batch, head, q_start, stride_stat_b, stride_stat_h, 1) + offs_m,
        row_delta,
        mask=offs_m < q_len,
    )


@triton.jit
def _dkdv_query_blocks(
    dk,
    dv,
    visited,
    k_tile,
    v_tile,
    q_seq,
    do_seq,
    lse_seq,
    delta_seq,
    stride_ql,
    stride_gl,
    offs_n,
    start,
    stop,
    q_len,
    k_len,
    ctx,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    MASKED: tl.constexpr,
    READONLY: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Accumulate dK, dV of one key tile over query blocks [start, stop), in transposed (key-major) form."""
    offs_d = tl.arange(0, HEAD_DIM)
    for m_start in range(start, stop, BLOCK_M):
        offs_m = m_start + tl.arange(0, BLOCK_M)
        qt_ptrs = q_seq + offs_m[None, :] * stride_ql + offs_d[:, None]  # Q^T tile (D, BLOCK_M)
        do_ptrs = do_seq + offs_m[:, None] * stride_gl + offs_d[None, :]  # dO tile (BLOCK_M, D)
        if MASKED:
            qt = tl.load(qt_ptrs, mask=offs_m[None, :] < q_len, other=0.0)
            do = tl.load(do_ptrs, mask=offs_m[:, None] < q_len, other=0.0)
            row_lse = tl.load(lse_seq + offs_m, mask=offs_m < q_len, other=0.0)
            row_delta = tl.load(delta_seq + offs_m, mask=offs_m < q_len, other=0.0)
        else:
            qt = tl.load(qt_ptrs)
            do = tl.load(do_ptrs)
            row_lse = tl.load(lse_seq + offs_m)
            row_delta = tl.load(delta_seq + offs_m)
        if UPCAST:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        scores_t = tl.dot(k_tile, qt, input_precision=INPUT_PRECISION) * qk_scale - row_lse[None, :]
        if MASKED:
            keep = allowed_pairs(offs_m[None, :], offs_n[:, None], q_len, k_len, ctx, READONLY)
            scores_t = tl.where(keep, scores_t, float("-inf"))
        p_t = tl.math.exp2(scores_t)  # P^T (BLOCK_N, BLOCK_M)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
        dp_t = tl.dot(v_tile, tl.trans(do), input_precision=INPUT_PRECISION)
        ds_t = p_t * (dp_t - row_delta[None, :])
        dk = tl.dot(ds_t.to(qt.dtype), tl.trans(qt), dk, input_precision=INPUT_PRECISION)
        visited += 1
    return dk, dv, visited


@triton.jit
def attention_backward_dkdv_kernel(
    q,
    k,
    v,
    grad_out,
    lse,
    delta,
    grad_k,
    grad_v,
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
    stride_gb,
    stride_gl,
    stride_gh,
    stride_dkb,
    stride_dkl,
    stride_dkh,
    stride_stat_b,
    stride_stat_h,
    num_heads,
    seqlen_q,
    seqlen_k,
    num_video,
    qk_scale,
    softmax_scale,
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
    """One key tile per program; grad_k and grad_v are fresh tensors of one shape, so they share strides."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    q_start, q_len, k_start, k_len, ctx = sequence_bounds(
        batch, cu_seqlens_q, cu_seqlens_k, context_start, seqlen_q, seqlen_k, num_video, VARLEN, READONLY
    )
    n_start = pid_n * BLOCK_N
    if n_start >= k_len:
        return

    offs_n = n_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    keys = offs_n[:, None] < k_len
    k_tile = tl.load(
        token_base(k, batch, head, k_start, stride_kb, stride_kh, stride_kl)
        + offs_n[:, None] * stride_kl
        + offs_d[None, :],
        mask=keys,
        other=0.0,
    )
    v_tile = tl.load(
        token_base(v, batch, head, k_start, stride_vb, stride_vh, stride_vl)
        + offs_n[:, None] * stride_vl
        + offs_d[None, :],
        mask=keys,
        other=0.0,
    )
    if UPCAST:
        k_tile = k_tile.to(tl.float32)
        v_tile = v_tile.to(tl.float32)
    q_seq = token_base(q, batch, head, q_start, stride_qb, stride_qh, stride_ql)
    do_seq = token_base(grad_out, batch, head, q_start, stride_gb, stride_gh, stride_gl)
    lse_seq = token_base(lse, batch, head, q_start, stride_stat_b, stride_stat_h, 1)
    delta_seq = token_base(delta, batch, head, q_start, stride_stat_b, stride_stat_h, 1)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    visited = 0
    b, hi = query_block_ranges(n_start, q_len, k_len, ctx, BLOCK_M, BLOCK_N, READONLY)
    dk, dv, visited = _dkdv_query_blocks(
        dk,
        dv,
        visited,
        k_tile,
        v_tile,
        q_seq,
        do_seq,
        lse_seq,
        delta_seq,
        stride_ql,
        stride_gl,
        offs_n,
        0,
        b,
        q_len,
        k_len,
        ctx,
        qk_scale,
        HEAD_DIM,
        BLOCK_M,
        False,
        READONLY,
        UPCAST,
        INPUT_PRECISION,
    )
    dk, dv, visited = _dkdv_query_blocks(
        dk,
        dv,
        visited,
        k_tile,
        v_tile,
        q_seq,
        do_seq,
        lse_seq,
        delta_seq,
        stride_ql,
        stride_gl,
        offs_n,
        b,
        hi,
        q_len,
        k_len,
        ctx,
        qk_scale,
        HEAD_DIM,
        BLOCK_M,
        True,
        READONLY,
        UPCAST,
        INPUT_PRECISION,
    )

    tile = offs_n[:, None] * stride_dkl + offs_d[None, :]
    tl.store(
        token_base(grad_k, batch, head, k_start, stride_dkb, stride_dkh, stride_dkl) + tile,
        (dk * softmax_scale).to(grad_k.dtype.element_ty),
        mask=keys,
    )
    tl.store(
        token_base(grad_v, batch, head, k_start, stride_dkb, stride_dkh, stride_dkl) + tile,
        dv.to(grad_v.dtype.element_ty),
        mask=keys,
    )
    if COUNT_BLOCKS:
        tl.store(block_counts + pid_bh * tl.num_programs(0) + pid_n, visited)


@triton.jit
def _dq_key_blocks(
    dq,
    visited,
    q_tile,
    do,
    row_lse,
    row_delta,
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
    """Accumulate dQ of one query tile over key blocks [start, stop)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for n_start in range(start, stop, BLOCK_N):
        offs_n = n_start + tl.arange(0, BLOCK_N)
        kt_ptrs = k_seq + offs_n[None, :] * stride_kl + offs_d[:, None]  # K^T (D, BLOCK_N)
        vt_ptrs = v_seq + offs_n[None, :] * stride_vl + offs_d[:, None]  # V^T (D, BLOCK_N)
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < k_len, other=0.0)
            vt = tl.load(vt_ptrs, mask=offs_n[None, :] < k_len, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        scores = tl.dot(q_tile, kt, input_precision=INPUT_PRECISION) * qk_scale - row_lse[:, None]
        if MASKED:
            keep = allowed_pairs(offs_m[:, None], offs_n[None, :], q_len, k_len, ctx, READONLY)
            scores = tl.where(keep, scores, float("-inf"))
        p = tl.math.exp2(scores)
        dp = tl.dot(do, vt, input_precision=INPUT_PRECISION)
        ds = p * (dp - row_delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=INPUT_PRECISION)
        visited += 1
    return dq, visited


@triton.jit
def attention_backward_dq_kernel(
    q,
    k,
    v,
    grad_out,
    lse,
    delta,
    grad_q,
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
    stride_gb,
    stride_gl,
    stride_gh,
    stride_dqb,
    stride_dql,
    stride_dqh,
    stride_stat_b,
    stride_stat_h,
    num_heads,
    seqlen_q,
    seqlen_k,
    num_video,
    qk_scale,
    softmax_scale,
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
    """One query tile per program, walking the same key ranges as the forward (masked blocks skipped)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // num_heads
    head = pid_bh % num_heads
    q_start, q_len, k_start, k_len, ctx = sequence_bounds(
        batch, cu_seqlens_q, cu_seqlens_k, context_start, seqlen_q, seqlen_k, num_video, VARLEN, READONLY
    )
    m_start = pid_m * BLOCK_M
    if m_start >= q_len:
        return

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] < q_len
    q_tile = tl.load(
        token_base(q, batch, head, q_start, stride_qb, stride_qh, stride_ql)
        + offs_m[:, None] * stride_ql
        + offs_d[None, :],
        mask=rows,
        other=0.0,
    )
    do = tl.load(
        token_base(grad_out, batch, head, q_start, stride_gb, stride_gh, stride_gl)
        + offs_m[:, None] * stride_gl
        + offs_d[None, :],
        mask=rows,
        other=0.0,
    )
    if UPCAST:
        q_tile = q_tile.to(tl.float32)
        do = do.to(tl.float32)
    row_lse = tl.load(
        token_base(lse, batch, head, q_start, stride_stat_b, stride_stat_h, 1) + offs_m,
        mask=offs_m < q_len,
        other=0.0,
    )
    row_delta = tl.load(
        token_base(delta, batch, head, q_start, stride_stat_b, stride_stat_h, 1) + offs_m,
        mask=offs_m < q_len,
        other=0.0,
    )
    k_seq = token_base(k, batch, head, k_start, stride_kb, stride_kh, stride_kl)
    v_seq = token_base(v, batch, head, k_start, stride_vb, stride_vh, stride_vl)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    visited = 0
    lo, a, b, hi = key_block_ranges(m_start, q_len, k_len, ctx, BLOCK_M, BLOCK_N, READONLY)
    dq, visited = _dq_key_blocks(
        dq,
        visited,
        q_tile,
        do,
        row_lse,
        row_delta,
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
    dq, visited = _dq_key_blocks(
        dq,
        visited,
        q_tile,
        do,
        row_lse,
        row_delta,
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
    dq, visited = _dq_key_blocks(
        dq,
        visited,
        q_tile,
        do,
        row_lse,
        row_delta,
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
    dq_ptrs = token_base(grad_q, batch, head, q_start, stride_dqb, stride_dqh, stride_dql)
    tl.store(
        dq_ptrs + offs_m[:, None] * stride_dql + offs_d[None, :],
        (dq * softmax_scale).to(grad_q.dtype.element_ty),
        mask=rows,
    )
    if COUNT_BLOCKS:
        tl.store(block_counts + pid_bh * tl.num_programs(0) + pid_m, visited)


def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    problem: Problem,
    *,
    dkdv_tiles: Tiles | None = None,
    dq_tiles: Tiles | None = None,
    dkdv_block_counts: torch.Tensor | None = None,
    dq_block_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for the forward that produced ``out``
    and ``lse``; ``*_block_counts`` as in the forward."""
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
    grad_k = torch.empty_like(k, memory_format=torch.contiguous_format)
    grad_v = torch.empty_like(v, memory_format=torch.contiguous_format)
    delta = torch.empty_like(lse)
    sqb, sql, sqh = problem.token_strides(q)
    skb, skl, skh = problem.token_strides(k)
    svb, svl, svh = problem.token_strides(v)
    sgb, sgl, sgh = problem.token_strides(grad_out)
    sob, sol, soh = problem.token_strides(out)
    sdb, sdl, sdh = problem.token_strides(grad_q)
    skgb, skgl, skgh = problem.token_strides(grad_k)
    ssb, ssh = problem.row_stat_strides(lse)
    bh = problem.batch * problem.heads

    attention_backward_delta_kernel[(triton.cdiv(problem.seqlen_q, PREPROCESS_BLOCK_M), bh)](
        out,
        grad_out,
        delta,
        problem.cu_seqlens_q,
        sob,
        sol,
        soh,
        sgb,
        sgl,
        sgh,
        ssb,
        ssh,
        problem.heads,
        problem.seqlen_q,
        HEAD_DIM=problem.head_dim,
        BLOCK_M=PREPROCESS_BLOCK_M,
        VARLEN=problem.varlen,
    )

    common = dict(
        q=q,
        k=k,
        v=v,
        grad_out=grad_out,
        lse=lse,
        delta=delta,
        stride_qb=sqb,
        stride_ql=sql,
        stride_qh=sqh,
        stride_kb=skb,
        stride_kl=skl,
        stride_kh=skh,
        stride_vb=svb,
        stride_vl=svl,
        stride_vh=svh,
        stride_gb=sgb,
        stride_gl=sgl,
        stride_gh=sgh,
        stride_stat_b=ssb,
        stride_stat_h=ssh,
        qk_scale=problem.qk_scale,
        softmax_scale=problem.softmax_scale,
        **problem.sequence_args(),
        **dot_settings(q.dtype, q.device),
    )
    for counts, tiles in ((dkdv_block_counts, dkdv_tiles), (dq_block_counts, dq_tiles)):
        if counts is not None and tiles is None:
            raise ValueError("block counts need explicit tiles (the count layout depends on the block size)")
    launch(
        attention_backward_dkdv_kernel,
        "dkdv",
        lambda block_m, block_n: (triton.cdiv(problem.seqlen_k, block_n), bh),
        dict(
            common,
            grad_k=grad_k,
            grad_v=grad_v,
            stride_dkb=skgb,
            stride_dkl=skgl,
            stride_dkh=skgh,
            block_counts=dkdv_block_counts,
            COUNT_BLOCKS=dkdv_block_counts is not None,
        ),
        head_dim=problem.head_dim,
        tiles=dkdv_tiles,
    )
    launch(
        attention_backward_dq_kernel,
        "dq",
        lambda block_m, block_n: (triton.cdiv(problem.seqlen_q, block_m), bh),
        dict(
            common,
            grad_q=grad_q,
            stride_dqb=sdb,
            stride_dql=sdl,
            stride_dqh=sdh,
            block_counts=dq_block_counts,
            COUNT_BLOCKS=dq_block_counts is not None,
        ),
        head_dim=problem.head_dim,
        tiles=dq_tiles,
    )
    return grad_q, grad_k, grad_v
