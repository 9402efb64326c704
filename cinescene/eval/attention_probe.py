"""How much the video attends to the scene: the softmax mass of video queries on context keys.

Inside :func:`context_attention`, every DiT self-attention over [video ++
context] also computes, from the same q and k, each video query's attention
weights (softmax over all keys it may see, scale 1/sqrt(D), the readonly
mask changes nothing for video queries) and records the mean over queries
and heads of the weight that falls on context keys, one value per call (per
block, per forward). The attention itself runs unchanged.

A model that ignores the scene puts about nothing there; one that attends
uniformly puts the context's share of the keys, ``context / (video +
context)`` (:attr:`ContextAttention.uniform`). A measuring tool for CPU-scale
models (it materialises the (L, L) weights): the ablation benchmark runs it
during generation of the held-out samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from cinescene.models.attention import SelfAttentionCall


@dataclass
class ContextAttention:
    masses: list[float] = field(default_factory=list)  # one per self-attention call with context keys
    shares: list[float] = field(default_factory=list)  # the context's share of the keys, per call
    layers: int | None = None  # calls per forward, when known

    @property
    def mean(self) -> float | None:
        return sum(self.masses) / len(self.masses) if self.masses else None

    @property
    def uniform(self) -> float | None:
        return sum(self.shares) / len(self.shares) if self.shares else None

    def per_layer(self) -> list[float]:
        """Mean mass per block (calls are in block order within each forward)."""
        if not self.layers or not self.masses:
            return []
        return [
            sum(self.masses[i :: self.layers]) / len(self.masses[i :: self.layers])
            for i in range(self.layers)
        ]


def _mass(call: SelfAttentionCall, q: torch.Tensor, k: torch.Tensor) -> tuple | None:
    num_video = call.num_video
    if num_video is None or k.shape[1] <= num_video:
        return None
    scores = torch.einsum("blhd,bmhd->bhlm", q[:, :num_video].float(), k.float()) / math.sqrt(q.shape[-1])
    if call.packing is not None:  # padding keys (missing scene images) take no part
        valid = call.packing.valid_host.to(scores.device)[:, None, None, :]
        scores = scores.masked_fill(~valid, float("-inf"))
        share = (valid[:, 0, 0, num_video:].sum(-1).float() / valid[:, 0, 0].sum(-1).float()).mean().item()
    else:
        share = (k.shape[1] - num_video) / k.shape[1]
    weights = scores.softmax(dim=-1)
    return weights[..., num_video:].sum(-1).mean().item(), share


@contextmanager
def context_attention(layers: int | None = None) -> Iterator[ContextAttention]:
    """Record the context attention mass of every self-attention call made inside the block."""
    record = ContextAttention(layers=layers)
    original = SelfAttentionCall.__call__

    def probed(self, q, k, v):
        found = _mass(self, q, k)
        if found is not None:
            record.masses.append(found[0])
            record.shares.append(found[1])
        return original(self, q, k, v)

    SelfAttentionCall.__call__ = probed
    try:
        yield record
    finally:
        SelfAttentionCall.__call__ = original
