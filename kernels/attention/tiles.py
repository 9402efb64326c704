"""Triton helpers every attention kernel shares: where a sequence lives, which tiles a program visits.

One set of kernels serves the padded batch layout (B, L, H, D) and the packed
variable-length layout (total_tokens, H, D) with ``cu_seqlens``, the full and
the context-readonly masks. The differences are confined to the two helpers
here, selected by ``constexpr`` flags, so each compiled variant carries only
the code it needs.

Loop structure. A program walks the blocks of the other operand in three
block-aligned ranges, ``[lo, a)`` with the elementwise mask, ``[a, b)`` without
any mask (the bulk: no predicate, no masked loads), ``[b, hi)`` with the mask
again (the tail block past the last full one, and under the readonly mask the
query rows of a straddling block). Masked-out blocks are outside every range:
they are never loaded or multiplied.

Readonly mask, with ``ctx`` the first context position of the sequence:
a query at position ``i`` may see key ``j`` iff ``i < ctx or j >= ctx``.
"""

import triton
import triton.language as tl


@triton.jit
def sequence_bounds(
    batch,
    cu_seqlens_q,
    cu_seqlens_k,
    context_start,
    seqlen_q,
    seqlen_k,
    num_video,
    VARLEN: tl.constexpr,
    READONLY: tl.constexpr,
):
    """(q_start, q_len, k_start, k_len, ctx) of sequence ``batch``.

    Padded layout: the sequence starts at token 0 of its batch row (the batch
    stride does the rest) and every row has the same lengths and ``num_video``.
    Packed layout: starts and lengths come from the int32 cumulative lengths,
    the context start from the per-sequence ``context_start`` array (relative
    to the sequence's first token). Without the readonly mask ``ctx`` is the
    key length, which makes the mask predicate a plain bounds check.
    """
    if VARLEN:
        q_start = tl.load(cu_seqlens_q + batch)
        q_len = tl.load(cu_seqlens_q + batch + 1) - q_start
        k_start = tl.load(cu_seqlens_k + batch)
        k_len = tl.load(cu_seqlens_k + batch + 1) - k_start
        if READONLY:
            ctx = tl.load(context_start + batch)
        else:
            ctx = k_len
    else:
        q_start = 0
        q_len = seqlen_q
        k_start = 0
        k_len = seqlen_k
        if READONLY:
            ctx = num_video
        else:
            ctx = seqlen_k
    return q_start, q_len, k_start, k_len, ctx


@triton.jit
def token_base(ptr, batch, head, start, stride_b, stride_h, stride_l):
    """Address of token ``start`` of (batch, head); 64-bit because B * L * H * D passes 2**31."""
    return (
        ptr
        + batch.to(tl.int64) * stride_b
        + head.to(tl.int64) * stride_h
        + tl.cast(start, tl.int64) * stride_l
    )


@triton.jit
def key_block_ranges(
    m_start, q_len, k_len, ctx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, READONLY: tl.constexpr
):
    """Key ranges (lo, a, b, hi) for the query block starting at ``m_start`` (forward and dQ).

    A block of context queries only (``m_start >= ctx``) starts at the key
    block holding ``ctx``: the video keys before it are skipped; that first
    block is masked unless ``ctx`` is block-aligned. A block holding both video
    and context queries (one per sequence) takes the masked path throughout.
    Video-only query blocks see every key.
    """
    full_stop = (k_len // BLOCK_N) * BLOCK_N  # keys past this need the bounds mask
    if READONLY:
        context_only = m_start >= ctx
        straddles = (m_start < ctx) & (tl.minimum(m_start + BLOCK_M, q_len) > ctx)
        first_context_block = (ctx // BLOCK_N) * BLOCK_N
        lo = tl.where(context_only, first_context_block, 0)
        a = tl.where(context_only, tl.minimum(tl.cdiv(ctx, BLOCK_N) * BLOCK_N, full_stop), 0)
        a = tl.maximum(tl.where(straddles, full_stop, a), lo)
    else:
        lo = 0
        a = 0
    return lo, a, full_stop, k_len


@triton.jit
def query_block_ranges(
    n_start, q_len, k_len, ctx, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, READONLY: tl.constexpr
):
    """Query ranges (b, hi) for the key block starting at
    ``n_start`` (dK/dV): ``[0, b)`` unmasked, ``[b, hi)`` masked.

    Video keys (the block ends at or before ``ctx``) receive gradient only from
    video queries: the loop stops at ``ctx``, so context query blocks are
    skipped, and the query block straddling ``ctx`` is masked. A key block
    that straddles ``ctx`` takes the masked path for every query block.
    """
    full_stop = (q_len // BLOCK_M) * BLOCK_M  # queries past this need the bounds mask
    if READONLY:
        video_only = tl.minimum(n_start + BLOCK_N, k_len) <= ctx
        straddles = (n_start < ctx) & (tl.minimum(n_start + BLOCK_N, k_len) > ctx)
        video_queries = tl.minimum(ctx, q_len)
        b = tl.where(video_only, tl.minimum((video_queries // BLOCK_M) * BLOCK_M, full_stop), full_stop)
        b = tl.where(straddles, 0, b)
        hi = tl.where(video_only, video_queries, q_len)
    else:
        b = full_stop
        hi = q_len
    return b, hi


@triton.jit
def allowed_pairs(q_pos, k_pos, q_len, k_len, ctx, READONLY: tl.constexpr):
    """The elementwise predicate of the masked ranges: in bounds, and the readonly rule.

    ``q_pos``/``k_pos`` are already broadcast against each other: (M, 1) and
    (1, N) for a scores tile, (1, M) and (N, 1) for a transposed one.
    """
    allowed = (q_pos < q_len) & (k_pos < k_len)
    if READONLY:
        allowed = allowed & ((q_pos < ctx) | (k_pos >= ctx))
    return allowed
