"""Which tokens of a padded batch are real, and how to pack them for variable-length attention.

Samples with different numbers of scene images have different numbers of
context tokens. The blocks still run on one padded (B, L, dim) tensor (the
token-wise layers cost little on padding), but attention, the quadratic
part, must neither compute over padding nor let a real token see it: each
attention call gathers the real tokens into one packed (total, H, D) tensor
with cumulative lengths (flash-attn's varlen convention), attends per
sequence, and scatters the result back (zeros at padding).

A :class:`TokenPacking` is built once per forward from a (B, L) boolean mask,
on the host (one small copy; the mask is built from per-sample scene counts),
and reused by every layer. Queries of a call sit at the first ``Lq`` key
positions (self-attention: Lq = L; the context cache's video-only steps: the
video prefix), so one packing describes both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class TokenPacking:
    """Real-token layout of a padded (B, L) batch: gather/scatter indices and cumulative lengths."""

    def __init__(self, valid: torch.Tensor, device=None):
        if valid.dim() != 2 or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a (B, L) bool tensor, got {tuple(valid.shape)} {valid.dtype}")
        self.valid_host = valid.detach().cpu()
        self.device = torch.device(device) if device is not None else valid.device
        self.batch, self.length = self.valid_host.shape
        self.lengths: list[int] = self.valid_host.sum(1).tolist()
        self.max_seqlen = max(self.lengths) if self.lengths else 0
        flat = torch.nonzero(self.valid_host.reshape(-1), as_tuple=False).reshape(-1)
        self.index = flat.to(self.device)
        cu = torch.zeros(self.batch + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(self.lengths, dtype=torch.int64), 0).to(torch.int32)
        self.cu_seqlens = cu.to(self.device)
        self._prefixes: dict[int, TokenPacking] = {}
        self._starts: dict[int, torch.Tensor] = {}

    @property
    def is_dense(self) -> bool:
        """Every position is real: attention needs no packing."""
        return sum(self.lengths) == self.batch * self.length

    def prefix(self, n: int) -> TokenPacking:
        """The packing of positions [0, n) (the queries of a call whose keys this packing describes)."""
        if n == self.length:
            return self
        if not 0 < n < self.length:
            raise ValueError(f"a query prefix of {n} positions does not fit {self.length} key positions")
        if n not in self._prefixes:
            self._prefixes[n] = TokenPacking(self.valid_host[:, :n], device=self.device)
        return self._prefixes[n]

    def real_before(self, position: int) -> list[int]:
        """Per sample: how many real tokens precede ``position`` (a packed sequence's context start)."""
        return self.valid_host[:, :position].sum(1).tolist()

    def context_starts(self, position: int) -> torch.Tensor:
        """:meth:`real_before` as an int32 tensor on the packing's device, made once per position: every
        layer's varlen launch reuses it (a host-to-device copy per layer would stall the GPU stream)."""
        if position not in self._starts:
            self._starts[position] = torch.tensor(self.real_before(position), dtype=torch.int32).to(
                self.device
            )
        return self._starts[position]

    def check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[:2]) != (self.batch, self.length):
            raise ValueError(
                f"a packing of (B={self.batch}, L={self.length}) does not describe a tensor of "
                f"shape {tuple(x.shape)}"
            )

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (total, ...): the real tokens, sample after sample, in position order."""
        self.check(x)
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(total, ...) -> (B, L, ...), zeros at padding (differentiable in ``packed``)."""
        out = packed.new_zeros(self.batch * self.length, *packed.shape[1:])
        out = out.index_copy(0, self.index, packed)
        return out.reshape(self.batch, self.length, *packed.shape[1:])

    def split(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """(total, ...) -> per-sample (L_i, ...) views."""
        return list(torch.split(packed, self.lengths, dim=0))


def real_images(counts: Sequence[int], num_images: int) -> torch.Tensor:
    """(B, S) bool on the host: which of a sample's
    ``num_images`` scene images are real (the first counts[b])."""
    return torch.arange(num_images)[None, :] < torch.as_tensor(list(counts), dtype=torch.int64)[:, None]


def packing_from_valid(valid: torch.Tensor | None, device=None) -> TokenPacking | None:
    """A packing for ``valid``, or None when there is nothing to pack (no mask, or every token real)."""
    if valid is None:
        return None
    packing = TokenPacking(valid, device=device)
    return None if packing.is_dense else packing
