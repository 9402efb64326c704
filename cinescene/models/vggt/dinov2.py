"""The DINOv2 ViT (with registers) that VGGT uses as its patch embedding: ``aggregator.patch_embed.*``.

Keys, as in VGGT-1B (ViT-L/14, 518 px): ``cls_token`` (1, 1, C),
``pos_embed`` (1, 1 + 37*37, C), ``register_tokens`` (1, 4, C),
``mask_token`` (1, C), ``patch_embed.proj.{weight,bias}`` (Conv2d 3->C,
14x14), ``blocks.N.*`` (see :mod:`.layers`), ``norm.{weight,bias}``. The
output VGGT consumes is the final-normed patch tokens (``x_norm_patchtokens``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import normal_parameter
from .layers import Block


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
        attention_backend: str = "auto",
    ):
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        # Initialised here (not in a later pass) so that deepspeed.zero.Init sees the values.
        self.cls_token = normal_parameter(1, 1, embed_dim, std=1e-6)
        self.pos_embed = normal_parameter(1, 1 + grid * grid, embed_dim, std=0.02, truncated=True)
        self.register_tokens = (
            normal_parameter(1, num_register_tokens, embed_dim, std=1e-6) if num_register_tokens else None
        )
        self.blocks = nn.ModuleList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    init_values=init_values,
                    norm_eps=1e-6,
                    init="trunc_normal",
                    backend=attention_backend,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # Unused at inference (masked-image training); kept because the checkpoint holds it.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)

    def position_embedding(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """pos_embed for a (height, width) pixel image: bicubic-resized (antialiased) patch part."""
        pos = self.pos_embed
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        rows, cols = height // self.patch_size, width // self.patch_size
        side = int(math.sqrt(patch_pos.shape[1]))
        if (rows, cols) != (side, side):
            grid = patch_pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True)
            patch_pos = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([cls_pos, patch_pos.to(pos.dtype)], dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W), normalised -> final-normed patch tokens (N, H/p * W/p, C)."""
        n, _, height, width = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
        x = x + self.position_embedding(height, width, x.dtype)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1).to(x.dtype), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
