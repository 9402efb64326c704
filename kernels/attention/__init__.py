"""Fused Triton attention over the extended [video ++ scene context] sequence.

Public API:

- ``fused_attention(q, k, v, num_video=None, mask="full", softmax_scale=None)``:
  q/k/v (B, L, H, D); ``mask="context_readonly"`` skips the key blocks that
  context queries may not see.
- ``fused_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
  max_seqlen_k, context_start=None, mask=None, softmax_scale=None)``: packed
  (total_tokens, H, D) sequences of different lengths, per-sequence context start.
- ``is_available(device)`` and ``supports(q, k, v, num_video=, mask=)``: whether
  the kernels can run (CUDA + triton, or ``TRITON_INTERPRET=1`` on CPU).
- ``pack_sequences`` / ``unpack_sequences`` for the packed layout.

Importing this package does not import triton; the kernels are built on the
first call. Modules: ``forward`` / ``backward`` (kernels), ``tiles`` (the
block-loop bounds they share), ``op`` (torch custom ops + autograd),
``reference`` (float64 ground truth), ``check`` (the interpreter correctness
sweep), ``bench`` (GPU benchmark), ``hopper_compile`` (sm_90 AOT compile check).
"""

from .api import fused_attention, is_available, supports
from .varlen import fused_attention_varlen, pack_sequences, unpack_sequences

__all__ = [
    "fused_attention",
    "fused_attention_varlen",
    "is_available",
    "supports",
    "pack_sequences",
    "unpack_sequences",
]
