"""Scene-context tokens from VGGT features: ``scene_encoder.{vggt, projector, null_token, pose_embedding}``.

Per scene image: the aggregator's 2C-wide features of the configured layers
are averaged, the special tokens dropped, the (rows, cols) patch grid resized
to the video's latent patch grid (Hp, Wp) (``scene.pooling``), and each cell
projected into the DiT width. A sample with S images yields S*Hp*Wp tokens,
image-major, row-major: e.g. 20 images at 480x832 -> 20*30*52 = 31,200.

Projector: LayerNorm(2C) -> Linear(2C, dim) -> GELU(tanh) -> Linear(dim, dim),
the last Linear zero-initialised so the tokens start blank and the features
fade in as it learns (the DiT is pretrained without them).

``pose_embedding`` (``scene.pose_embedding``, zero-initialised Linear(12, dim)):
each scene image's pose relative to the target's first frame
(:func:`.camera.scene_pose_features`) embedded once per image and added to
all of that image's context tokens, VGGT and pixel alike (both parts are
image-major). Padding images (past ``counts``) get nothing added.

``null_token`` (zero-initialised, learned) replaces every context token of
a sample whose scene is dropped (classifier-free guidance): the sequence
keeps its length, so a batch can mix dropped and kept samples; the
unconditional branch at sampling time uses the same null tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cinescene.config.model import SceneContextConfig

from .layers import FP32LayerNorm, Linear
from .packing import real_images
from .vggt import VGGT, vggt_grid


class SceneEncoder(nn.Module):
    def __init__(self, cfg: SceneContextConfig, dim: int, attention_backend: str = "auto"):
        super().__init__()
        self.layers = [int(i) for i in cfg.layers]
        self.pooling = cfg.pooling
        feature_dim = 2 * cfg.vggt.embed_dim
        if cfg.vggt_tokens:
            self.vggt = VGGT(cfg.vggt, camera_head=False, attention_backend=attention_backend)
            self.projector = nn.Sequential(
                FP32LayerNorm(feature_dim),
                Linear(feature_dim, dim),
                nn.GELU(approximate="tanh"),
                Linear(dim, dim, init="zeros"),
            )
        if cfg.pose_embedding:
            self.pose_embedding = Linear(12, dim, init="zeros")
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))

    def extract_features(self, images: torch.Tensor, counts: Sequence[int] | None = None) -> torch.Tensor:
        """(B, S, 3, H, W) in [0, 1] -> VGGT features on its patch grid (B, S, rows, cols, 2C).

        This is what ``CineSceneModel.forward(scene_tokens=...)`` accepts, so it
        can be computed once (the VGGT is frozen) and cached. Runs without
        autograd when no VGGT parameter trains. ``counts[b]``: sample b's real
        images, the rest padding: VGGT's global attention (which spans all
        images of a sample) then sees only the real ones, so their features are
        those of the sample without padding, and the padding images' features
        are zeros. One VGGT call either way, so ZeRO-3 ranks stay in step.
        """
        vggt = self.vggt
        trains = any(p.requires_grad for p in vggt.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            outputs = vggt.features(images, self.layers, counts)
            feats = torch.stack([outputs[i % vggt.cfg.depth] for i in self.layers]).mean(0)
        b, s = feats.shape[:2]
        rows, cols = vggt_grid(images.shape[-2], images.shape[-1], vggt.cfg.img_size, vggt.cfg.patch_size)
        feats = feats[:, :, vggt.aggregator.patch_start_idx :].reshape(b, s, rows, cols, -1)
        if counts is not None:
            feats = feats * real_images(counts, s).to(feats.device, feats.dtype)[:, :, None, None, None]
        return feats

    def forward(
        self,
        features: torch.Tensor | None,
        grid: tuple[int, int],
        pixel_tokens: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        poses: torch.Tensor | None = None,
        counts: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Context tokens (B, N_ctx, dim): projected VGGT features (if any), then pixel tokens (if any).

        ``features`` (B, S, rows, cols, 2C) from :meth:`extract_features`;
        ``grid`` the video's (Hp, Wp); ``pixel_tokens`` (B, S*h*w, dim) already
        patch-embedded scene latents; ``drop`` (B,) bool -> null tokens;
        ``poses`` (B, S, 12) the scene images' relative poses, required with
        the pose embedding; ``counts`` the real images per sample (None: all).
        """
        parts = []
        if features is not None:
            b, s, rows, cols, channels = features.shape
            maps = features.reshape(b * s, rows, cols, channels).permute(0, 3, 1, 2).float()
            if (rows, cols) != tuple(grid):
                if self.pooling == "area":
                    maps = F.adaptive_avg_pool2d(maps, grid)
                else:
                    maps = F.interpolate(
                        maps, size=tuple(grid), mode="bilinear", antialias=True, align_corners=False
                    )
            cells = maps.permute(0, 2, 3, 1).reshape(b, s * grid[0] * grid[1], channels)
            parts.append(self.projector(cells.to(self.null_token.dtype)))
        if pixel_tokens is not None:
            parts.append(pixel_tokens)
        if hasattr(self, "pose_embedding"):
            if poses is None:
                raise ValueError(
                    "model.scene.pose_embedding is on: pass cameras (the target trajectory) and scene_cameras"
                )
            embedded = self.embed_poses(poses, counts)
            parts = [_add_per_image(part, embedded) for part in parts]
        tokens = torch.cat(parts, dim=1)
        # The null token joins the graph even when nothing is dropped, so every rank uses the
        # same parameters (ZeRO-3 reduces gradients in lockstep).
        if drop is None:
            drop = torch.zeros(tokens.shape[0], dtype=torch.bool)
        null = self.null_token.to(tokens.dtype).expand_as(tokens)
        return torch.where(drop.to(tokens.device).view(-1, 1, 1), null, tokens)

    def embed_poses(self, poses: torch.Tensor, counts: Sequence[int] | None = None) -> torch.Tensor:
        """(B, S, 12) relative poses -> (B, S, dim) per-image embeddings, zero for padding images."""
        embedded = self.pose_embedding(poses.to(self.pose_embedding.weight.dtype))
        if counts is not None:
            embedded = (
                embedded * real_images(counts, poses.shape[1]).to(embedded.device, embedded.dtype)[..., None]
            )
        return embedded


def _add_per_image(tokens: torch.Tensor, per_image: torch.Tensor) -> torch.Tensor:
    """Image-major tokens (B, S*n, dim) plus one (B, S, dim) vector per image, broadcast over its n tokens."""
    b, length, dim = tokens.shape
    images = per_image.shape[1]
    if per_image.shape[0] != b or length % images:
        raise ValueError(
            f"{tuple(per_image.shape[:2])} scene poses do not fit {length} context tokens of {b} samples"
        )
    grouped = tokens.reshape(b, images, length // images, dim) + per_image.to(tokens.dtype)[:, :, None]
    return grouped.reshape(b, length, dim)
