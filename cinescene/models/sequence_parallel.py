"""Model side of Ulysses sequence parallelism (DeepSpeed ``DistributedAttention``).

Every rank of a sequence-parallel group holds the same sample. The model
builds the full [video ++ context] sequence and its per-token RoPE /
modulation / camera data, pads it to a multiple of the group size, and keeps
this rank's contiguous shard. Blocks run on the shard; self-attention goes
through ``DistributedAttention``: an all-to-all turns (B, L/P, H, D) shards
into (B, L, H/P, D) head groups, the local attention entry point runs on the
whole sequence (masks still refer to global positions; padding is cut off
before attending), and a second all-to-all returns to sequence shards.
Cross-attention to the text is local. After the blocks the head runs on the
shard and the outputs are gathered.

Gradients: each rank ends with the part of every parameter's gradient that
its shard contributed; their SUM over the group is the one-rank gradient.
That is what DeepSpeed ZeRO does for a sequence-parallel group (it divides
the reduced gradients by the data-parallel size only), so the trainer needs
no extra scaling. The gather's backward hands each rank its own slice of
the (identical, replicated) output gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from cinescene.errors import CineSceneError

from .attention import attention
from .packing import TokenPacking


def ensure_deepspeed_comm() -> None:
    """DistributedAttention talks through ``deepspeed.comm``; wrap the torch group if needed."""
    import deepspeed
    import deepspeed.comm as ds_comm

    if not ds_comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)


def check_group(group, num_heads: int) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise CineSceneError("sequence parallelism needs torch.distributed to be initialised first")
    size = dist.get_world_size(group)
    if num_heads % size:
        raise CineSceneError(
            f"sequence parallelism over {size} ranks needs the attention heads "
            f"({num_heads}) to be divisible by {size}; choose parallel.sequence "
            f"from the divisors of {num_heads}"
        )


class SequenceShard:
    """Which contiguous slice of a (padded) length-``total`` sequence this rank holds."""

    def __init__(self, total: int, group):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.total = total
        self.local = -(-total // self.size)
        self.padded = self.local * self.size
        self.start = self.rank * self.local

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Pad ``x`` along ``dim`` to the padded length (zeros) and keep this rank's slice."""
        pad = self.padded - x.shape[dim]
        if pad:
            widths = [0, 0] * (x.dim() - 1 - dim) + [0, pad]
            x = F.pad(x, widths)
        return x.narrow(dim, self.start, self.local)

    def local_count(self, first_n: int) -> int:
        """How many of the global positions [0, first_n) fall into this shard."""
        return max(0, min(first_n - self.start, self.local))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, local, ...) shards -> (B, padded, ...) on every rank (differentiable, see module doc)."""
        return _GatherShards.apply(x, self)


class _GatherShards(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
        ctx.shard = shard
        parts = [torch.empty_like(x) for _ in range(shard.size)]
        dist.all_gather(parts, x.contiguous(), group=shard.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        shard = ctx.shard
        return grad.narrow(1, shard.start, shard.local).contiguous(), None


class _UnpaddedAttention(nn.Module):
    """The local attention inside DistributedAttention: full (padded) sequence, a subset of heads."""

    def __init__(
        self,
        valid_len: int,
        num_video: int | None,
        mask: str,
        backend: str,
        packing: TokenPacking | None = None,
    ):
        super().__init__()
        self.valid_len, self.num_video, self.mask, self.backend = valid_len, num_video, mask, backend
        self.packing = packing

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = self.valid_len
        out = attention(
            q[:, :n],
            k[:, :n],
            v[:, :n],
            num_video=self.num_video,
            mask=self.mask,
            backend=self.backend,
            kind="self",
            packing=self.packing,
        )
        # Padding queries produce zeros; their outputs are discarded after the head.
        return F.pad(out, [0, 0, 0, 0, 0, q.shape[1] - n])


def ulysses_self_attention(
    shard: SequenceShard,
    num_video: int | None,
    mask: str,
    backend: str,
    packing: TokenPacking | None = None,
):
    """(q, k, v) shards (B, L/P, H, D) -> attention output shards, via DeepSpeed's all-to-all.

    ``packing`` describes the whole unsharded sequence (global positions), as
    the local attention sees it after the all-to-all.
    """
    from deepspeed.sequence.layer import DistributedAttention

    # Batch-first layout: scatter the head dim (2), gather the sequence dim (1).
    layer = DistributedAttention(
        _UnpaddedAttention(shard.total, num_video, mask, backend, packing),
        shard.group,
        scatter_idx=2,
        gather_idx=1,
    )

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return layer(q, k, v, 0)

    return attend
