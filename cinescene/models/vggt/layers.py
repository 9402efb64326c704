"""Transformer pieces of VGGT (facebookresearch/vggt ``vggt/layers``), key-compatible.

A block is ``norm1, attn.{qkv, q_norm, k_norm, proj}, ls1.gamma, norm2,
mlp.{fc1, fc2}, ls2.gamma`` in every place VGGT uses one: the DINOv2 patch
embedding (LayerNorm eps 1e-6, no qk-norm, layer scale 1.0), the aggregator's
frame/global blocks (eps 1e-5, qk LayerNorm per head, 2D RoPE, layer scale
0.01) and the camera head's trunk (eps 1e-5, layer scale 0.01). Attention runs
through :func:`cinescene.models.attention.attention` in (B, N, H, D) layout.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..attention import attention
from ..layers import Linear
from ..packing import TokenPacking


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        init: str = "torch",
    ):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features, init=init)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, out_features or in_features, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RoPE2D:
    """VGGT's 2D rotary embedding: first half of each head
    rotated by the token's row, second half by its column.

    Within a half of ``d`` channels, channel ``i`` and ``i + d/2`` form a
    rotated pair with frequency ``base^(-2i/d)`` ("rotate half" layout, unlike
    Wan's adjacent pairs). Special tokens sit at position (0, 0), i.e. unrotated.
    Holds no parameters: nothing to load or partition.
    """

    def __init__(self, frequency: float = 100.0):
        self.frequency = frequency

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, N, H, d); positions (B, N) integer."""
        d = x.shape[-1]
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, d, 2, device=x.device).float() / d))
        angles = positions.float()[..., None] * inv_freq  # (B, N, d/2)
        angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]  # (B, N, 1, d)
        first, second = x.chunk(2, dim=-1)
        rotated_half = torch.cat([-second, first], dim=-1)
        return (x.float() * angles.cos() + rotated_half.float() * angles.sin()).type_as(x)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, N, H, D); positions (B, N, 2) as (row, col)."""
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat(
            [self._rotate(rows, positions[..., 0]), self._rotate(cols, positions[..., 1])], dim=-1
        )


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qk_norm: bool = False,
        rope: RoPE2D | None = None,
        init: str = "torch",
        backend: str = "auto",
    ):
        super().__init__()
        self.backend = backend
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, init=init)
        # VGGT normalises q and k per head with an affine LayerNorm (eps 1e-5).
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = Linear(dim, dim, init=init)
        self.rope = rope

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, packing: TokenPacking | None = None
    ) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        return self.proj(attention(q, k, v, backend=self.backend, packing=packing).reshape(b, n, c))


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        init_values: float | None = None,
        qk_norm: bool = False,
        rope: RoPE2D | None = None,
        norm_eps: float = 1e-5,
        init: str = "torch",
        backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope, init=init, backend=backend)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), init=init)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor | None = None, packing: TokenPacking | None = None
    ) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, packing=packing))
        return x + self.ls2(self.mlp(self.norm2(x)))
