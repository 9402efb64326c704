"""VGGT's aggregator: DINOv2 patch tokens + camera/register tokens, alternating frame/global attention.

Keys (facebook/VGGT-1B): ``patch_embed.*`` (:class:`DinoViT`),
``frame_blocks.N.*`` and ``global_blocks.N.*`` (N < depth), ``camera_token``
(1, 2, 1, C) and ``register_token`` (1, 2, R, C). Index 0 of the special
tokens goes to the first image of each sample and index 1 to the rest: the
first image defines the world frame. Layer ``i``'s output is
``cat(frame_i, global_i)`` over channels, (B, S, P, 2C), where each image has
P = 1 + R + (H/14)(W/14) tokens and patch tokens start at 1 + R.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from ..layers import normal_parameter
from ..packing import packing_from_valid, real_images
from .dinov2 import DinoViT
from .layers import Block, RoPE2D

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _first_and_rest(tokens: torch.Tensor, batch: int, images: int) -> torch.Tensor:
    """(1, 2, X, C) special tokens -> (B*S, X, C): index 0 for image 0, index 1 for the others."""
    first = tokens[:, :1].expand(batch, 1, *tokens.shape[2:])
    rest = tokens[:, 1:].expand(batch, images - 1, *tokens.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(batch * images, *tokens.shape[2:])


class Aggregator(nn.Module):
    def __init__(
        self,
        *,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        patch_embed_depth: int = 24,
        rope_freq: float = 100.0,
        attention_backend: str = "auto",
    ):
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.patch_embed = DinoViT(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=patch_embed_depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_register_tokens=num_register_tokens,
            init_values=1.0,
            attention_backend=attention_backend,
        )
        self.rope = RoPE2D(rope_freq)

        def block() -> Block:
            return Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                init_values=0.01,
                qk_norm=True,
                rope=self.rope,
                backend=attention_backend,
            )

        self.frame_blocks = nn.ModuleList([block() for _ in range(depth)])
        self.global_blocks = nn.ModuleList([block() for _ in range(depth)])
        self.camera_token = normal_parameter(1, 2, 1, embed_dim, std=1e-6)
        self.register_token = normal_parameter(1, 2, num_register_tokens, embed_dim, std=1e-6)
        self.patch_start_idx = 1 + num_register_tokens
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def _positions(self, count: int, rows: int, cols: int, device) -> torch.Tensor:
        """(count, P, 2) (row, col) RoPE positions: special tokens at 0, patches from 1."""
        r = torch.arange(rows, device=device)
        c = torch.arange(cols, device=device)
        grid = torch.cartesian_prod(r, c) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype, device=device)
        return torch.cat([special, grid], dim=0).expand(count, -1, -1)

    def forward(
        self,
        images: torch.Tensor,
        layers: Iterable[int] | None = None,
        image_counts: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """images (B, S, 3, H, W) in [0, 1], H and W multiples of the patch size.

        Returns the (B, S, P, 2C) outputs of the requested layers (python
        indices, default: all), in the order requested; blocks after the
        deepest requested layer are not run. (A list, not a dict: DeepSpeed's
        ZeRO-3 forward hooks accept only tensors, sequences or str-keyed dicts.)

        ``image_counts[b]``: sample b's first images are real, the rest padding.
        Global attention then packs the real images' tokens (padding is never
        seen, so real outputs are those of the sample without its padding);
        padding images still run the per-image layers, so every sample, and
        every rank of a ZeRO-3 group, calls the same modules in the same order.
        Outputs at padding images are not meaningful.
        """
        b, s, channels, height, width = images.shape
        if channels != 3:
            raise ValueError(f"VGGT expects RGB images, got {channels} channels")
        requested = [i % self.depth for i in (range(self.depth) if layers is None else layers)]
        wanted = sorted(set(requested))
        x = ((images - self.image_mean) / self.image_std).reshape(b * s, 3, height, width)
        patches = self.patch_embed(x.to(self.camera_token.dtype))
        tokens = torch.cat(
            [
                _first_and_rest(self.camera_token, b, s).to(patches.dtype),
                _first_and_rest(self.register_token, b, s).to(patches.dtype),
                patches,
            ],
            dim=1,
        )
        p, c = tokens.shape[1:]
        pos = self._positions(b * s, height // self.patch_size, width // self.patch_size, images.device)
        packing = None
        if image_counts is not None:
            real = real_images(image_counts, s)[:, :, None].expand(b, s, p)
            packing = packing_from_valid(real.reshape(b, s * p), device=images.device)
        outputs: dict[int, torch.Tensor] = {}
        for i in range(wanted[-1] + 1):
            # Frame attention: each image alone; global attention: all images of a sample together.
            tokens = self.frame_blocks[i](tokens.reshape(b * s, p, c), pos=pos.reshape(b * s, p, 2))
            frame_out = tokens.reshape(b, s, p, c)
            tokens = self.global_blocks[i](
                tokens.reshape(b, s * p, c), pos=pos.reshape(b, s * p, 2), packing=packing
            )
            if i in wanted:
                outputs[i] = torch.cat([frame_out, tokens.reshape(b, s, p, c)], dim=-1)
        return [outputs[i] for i in requested]
