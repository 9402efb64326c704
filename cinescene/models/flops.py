"""Parameter counts, sequence lengths and FLOPs per training sample (``cinescene model info``, trainer MFU).

FLOP convention: a matmul of (m, k) x (k, n) costs 2*m*n*k; attention of Lq
queries over Lk keys costs 4*Lq*Lk*head_dim per head (QK^T and PV), counted
explicitly over the extended sequence and honouring ``context_readonly``
(video queries see all L keys, context queries only the Nc context keys:
4*dim*(Nv*L + Nc*Nc) per layer). Elementwise work (norms, RoPE, softmax,
modulation) is not counted.

These are *model* FLOPs, the MFU convention: a training sample costs 3x
the DiT forward (the forward, and a backward of twice its cost) plus the
scene encoder's forward once when it is frozen (no backward through VGGT),
3x when any of it trains. Activation checkpointing recomputes every
block's forward during the backward, so the hardware does about 4x the DiT
forward; that recomputation is not counted (it would be in "hardware FLOPs
utilisation"), so MFU stays comparable with checkpointing on or off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch.nn as nn

from cinescene.config.model import ModelConfig, VGGTConfig

from .cinescene_model import build_model
from .vggt import vggt_grid
from .zero import full_numel

CAMERA_MODULE = re.compile(r"^blocks\.\d+\.(cam_encoder|projector)\.")


@dataclass
class SampleShape:
    """One training sample's sizes: the video latent grid and the scene images."""

    latent_frames: int
    latent_height: int
    latent_width: int
    scene_images: int
    scene_height: int  # pixels (VGGT input before its own resizing)
    scene_width: int
    scene_latent_height: int  # scene latents (pixel context)
    scene_latent_width: int

    @classmethod
    def from_config(cls, cfg) -> SampleShape:
        """From a CineSceneConfig: ``model.data_shape`` fields,
        else the data section (see DataShapeConfig)."""
        shape = cfg.model.data_shape
        frames = shape.frames or cfg.data.synth.frames
        height, width = shape.size or cfg.data.synth.size
        scene_h, scene_w = shape.scene_size or (height, width)
        spatial = 8 if shape.encoder == "wan" else cfg.data.pixel_pool
        return cls(
            latent_frames=(frames - 1) // 4 + 1,
            latent_height=height // spatial,
            latent_width=width // spatial,
            scene_images=shape.scene_images or cfg.data.scene_images,
            scene_height=scene_h,
            scene_width=scene_w,
            scene_latent_height=scene_h // spatial,
            scene_latent_width=scene_w // spatial,
        )

    @classmethod
    def from_batch(cls, batch: dict[str, object]) -> SampleShape:
        """From a training batch (docs/CONTRACTS.md keys): what the trainer measures MFU on."""
        _, _, frames, height, width = batch["video"].shape
        images = batch.get("scene_images")
        latents = batch.get("scene_latents")
        count = images.shape[1] if images is not None else (latents.shape[1] if latents is not None else 0)
        scene_hw = tuple(images.shape[-2:]) if images is not None else (0, 0)
        latent_hw = tuple(latents.shape[-2:]) if latents is not None else (0, 0)
        return cls(
            latent_frames=frames,
            latent_height=height,
            latent_width=width,
            scene_images=count,
            scene_height=scene_hw[0],
            scene_width=scene_hw[1],
            scene_latent_height=latent_hw[0],
            scene_latent_width=latent_hw[1],
        )


@dataclass
class TokenCounts:
    video: int
    vggt_context: int
    pixel_context: int
    video_grid: tuple
    scene_images: int = 0  # images behind the context tokens (0 without context)

    @property
    def context(self) -> int:
        return self.vggt_context + self.pixel_context

    @property
    def total(self) -> int:
        return self.video + self.context


def token_counts(model: ModelConfig, shape: SampleShape) -> TokenCounts:
    pt, ph, pw = model.patch_size
    grid = (shape.latent_frames // pt, shape.latent_height // ph, shape.latent_width // pw)
    scene = model.scene
    vggt = shape.scene_images * grid[1] * grid[2] if scene.enabled and scene.vggt_tokens else 0
    pixel = (
        shape.scene_images * (shape.scene_latent_height // ph) * (shape.scene_latent_width // pw)
        if scene.enabled and scene.pixel_context
        else 0
    )
    return TokenCounts(
        video=math.prod(grid),
        vggt_context=vggt,
        pixel_context=pixel,
        video_grid=grid,
        scene_images=shape.scene_images if vggt or pixel else 0,
    )


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _attention(queries: int, keys: int, width: int) -> int:
    """All heads together: 4 * Lq * Lk * head_dim * heads = 4 * Lq * Lk * width."""
    return 4 * queries * keys * width


@dataclass
class DiTFlops:
    forward: int
    attention: int  # self- and cross-attention score/value products inside ``forward``


def dit_forward_flops(model: ModelConfig, tokens: TokenCounts) -> DiTFlops:
    d, n_video, n_ctx, n = model.dim, tokens.video, tokens.context, tokens.total
    text = model.text_len
    patch_in = model.in_dim * math.prod(model.patch_size)
    groups = 2 if n_ctx and model.scene.timestep == "clean" else 1
    flops = _linear(n_video + tokens.pixel_context, patch_in, d)  # patch embedding
    flops += _linear(text, model.text_dim, d) + _linear(text, d, d)  # text embedding
    flops += groups * (_linear(1, model.freq_dim, d) + _linear(1, d, d) + _linear(1, d, 6 * d))
    if tokens.vggt_context:  # scene projector
        flops += _linear(tokens.vggt_context, 2 * model.scene.vggt.embed_dim, d) + _linear(
            tokens.vggt_context, d, d
        )
    if tokens.context and model.scene.pose_embedding:  # scene pose embedding
        flops += _linear(tokens.scene_images, 12, d)
    if model.attention.mask == "context_readonly":
        self_attn = _attention(n_video, n, d) + _attention(n_ctx, n_ctx, d)
    else:
        self_attn = _attention(n, n, d)
    cross_attn = _attention(n, text, d)
    per_block = (
        4 * _linear(n, d, d)
        + self_attn  # self-attention
        + 2 * _linear(n, d, d)
        + 2 * _linear(text, d, d)
        + cross_attn  # cross-attention
        + 2 * _linear(n, d, model.ffn_dim)
    )  # FFN
    if model.camera.enabled:
        per_block += _linear(tokens.video_grid[0], 12, d)
        if model.camera.projector:
            per_block += _linear(n, d, d)
    flops += model.num_layers * per_block
    flops += _linear(n_video, d, model.out_dim * math.prod(model.patch_size))  # head
    return DiTFlops(forward=flops, attention=model.num_layers * (self_attn + cross_attn))


def _vit_block(tokens: int, groups: int, width: int, mlp_ratio: float) -> int:
    hidden = int(width * mlp_ratio)
    rows = tokens * groups
    return (
        _linear(rows, width, 3 * width)
        + _linear(rows, width, width)
        + _linear(rows, width, hidden)
        + _linear(rows, hidden, width)
        + groups * _attention(tokens, tokens, width)
    )


def vggt_forward_flops(vggt: VGGTConfig, layers: Iterable[int], images: int, height: int, width: int) -> int:
    """Aggregator forward for one sample of ``images`` images, run up to the deepest requested layer."""
    rows, cols = vggt_grid(height, width, vggt.img_size, vggt.patch_size)
    c, patches = vggt.embed_dim, rows * cols
    per_image = 1 + vggt.num_register_tokens + patches  # DINOv2: cls + registers; VGGT: camera + registers
    flops = _linear(images * patches, 3 * vggt.patch_size**2, c)
    flops += vggt.patch_embed_depth * _vit_block(per_image, images, c, vggt.mlp_ratio)
    depth_run = max(i % vggt.depth for i in layers) + 1
    flops += depth_run * (
        _vit_block(per_image, images, c, vggt.mlp_ratio)
        + _vit_block(images * per_image, 1, c, vggt.mlp_ratio)
    )
    return flops


@dataclass
class FlopsPerSample:
    dit_forward: int
    attention_forward: int
    scene_encoder_forward: int
    scene_encoder_trains: bool

    @property
    def training(self) -> int:
        return 3 * self.dit_forward + (3 if self.scene_encoder_trains else 1) * self.scene_encoder_forward


def flops_per_sample(
    model: ModelConfig, shape: SampleShape, *, scene_encoder_trains: bool = False
) -> FlopsPerSample:
    tokens = token_counts(model, shape)
    dit = dit_forward_flops(model, tokens)
    scene = 0
    if tokens.vggt_context:
        scene = vggt_forward_flops(
            model.scene.vggt, model.scene.layers, shape.scene_images, shape.scene_height, shape.scene_width
        )
    return FlopsPerSample(dit.forward, dit.attention, scene, scene_encoder_trains)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """dit (the base Wan DiT), scene_encoder (VGGT), new_modules
    (camera, projector, null token), trainable, total."""
    counts = {"dit": 0, "scene_encoder": 0, "new_modules": 0, "trainable": 0, "total": 0}
    for name, param in model.named_parameters():
        numel = full_numel(param)
        if name.startswith("scene_encoder.vggt."):
            counts["scene_encoder"] += numel
        elif name.startswith("scene_encoder.") or CAMERA_MODULE.match(name):
            counts["new_modules"] += numel
        else:
            counts["dit"] += numel
        counts["trainable"] += numel if param.requires_grad else 0
        counts["total"] += numel
    return counts


def model_info(cfg, model: nn.Module | None = None) -> dict[str, object]:
    """Everything ``cinescene model info`` prints, from a CineSceneConfig (builds on the meta device)."""
    model = model if model is not None else build_model(cfg.model, device="meta")
    params = parameter_counts(model)
    shape = SampleShape.from_config(cfg)
    tokens = token_counts(cfg.model, shape)
    scene_trains = any(
        p.requires_grad for n, p in model.named_parameters() if n.startswith("scene_encoder.vggt.")
    )
    flops = flops_per_sample(cfg.model, shape, scene_encoder_trains=scene_trains)
    return {
        "name": cfg.model.name,
        "dit_params": params["dit"],
        "scene_encoder_params": params["scene_encoder"],
        "new_module_params": params["new_modules"],
        "trainable_params": params["trainable"],
        "total_params": params["total"],
        "seq_len": tokens.total,
        "video_tokens": tokens.video,
        "context_tokens": tokens.context,
        "vggt_context_tokens": tokens.vggt_context,
        "pixel_context_tokens": tokens.pixel_context,
        "attention_mask": cfg.model.attention.mask,
        "sample_shape": asdict(shape),
        "flops_per_sample": flops.training,
        "dit_forward_flops": flops.dit_forward,
        "attention_forward_flops": flops.attention_forward,
        "scene_encoder_forward_flops": flops.scene_encoder_forward,
    }
