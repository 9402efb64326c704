"""The network: Wan2.1 DiT sizes, CineScene extensions, attention, weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .base import in_range, one_of, positive, require


@dataclass
class VGGTConfig:
    """VGGT aggregator size; defaults are facebook/VGGT-1B."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    # Local .pt/.safetensors of the VGGT-1B state dict (aggregator.*, camera_head.*).
    weights: Optional[str] = None

    def validate(self) -> None:
        positive(self.img_size, "img_size")
        positive(self.patch_size, "patch_size")
        require(self.img_size % self.patch_size == 0, "img_size", "a multiple of patch_size", self.img_size)
        require(self.embed_dim % self.num_heads == 0, "embed_dim", "a multiple of num_heads", self.embed_dim)
        positive(self.depth, "depth")


@dataclass
class SceneContextConfig:
    enabled: bool = True
    vggt: VGGTConfig = field(default_factory=VGGTConfig)
    # Aggregator layers whose 2*embed_dim features are averaged into the context.
    layers: List[int] = field(default_factory=lambda: [-1])
    # Also feed the scene images' VAE latents through the DiT's patch embedding.
    pixel_context: bool = False
    # "shared": context tokens get the video's timestep; "clean": t = 0 (enables K/V caching).
    timestep: str = "clean"

    def validate(self) -> None:
        require(len(self.layers) > 0, "layers", "at least one layer index", list(self.layers))
        one_of(self.timestep, "timestep", ["shared", "clean"])


@dataclass
class CameraConfig:
    enabled: bool = True
    # Cameras are expressed relative to this latent frame's camera.
    reference: str = "first"

    def validate(self) -> None:
        one_of(self.reference, "reference", ["first"])


@dataclass
class AttentionConfig:
    # "auto": fused Triton kernel on CUDA, else flash-attn if installed, else torch SDPA.
    backend: str = "auto"
    # "full": every token sees every token; "context_readonly": context queries see context keys only.
    mask: str = "full"

    def validate(self) -> None:
        one_of(self.backend, "backend", ["auto", "fused", "flash", "sdpa"])
        one_of(self.mask, "mask", ["full", "context_readonly"])


@dataclass
class ModelConfig:
    name: str = "tiny"
    # Wan2.1 DiT (reference names: dim, ffn_dim, num_heads, num_layers, ...).
    dim: int = 64
    ffn_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    in_dim: int = 16
    out_dim: int = 16
    patch_size: List[int] = field(default_factory=lambda: [1, 2, 2])
    freq_dim: int = 256
    text_len: int = 512
    text_dim: int = 4096
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    scene: SceneContextConfig = field(default_factory=SceneContextConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    # Glob patterns over parameter names that train; everything else is frozen.
    trainable: List[str] = field(default_factory=lambda: ["*"])
    # Patterns always frozen, applied after `trainable` (VGGT stays frozen by default).
    frozen: List[str] = field(default_factory=lambda: ["scene_encoder.vggt.*"])
    activation_checkpointing: bool = False
    # Pretrained DiT weights: a .safetensors, a sharded index .json, or a .pth.
    pretrained: Optional[str] = None
    pretrained_format: str = "auto"
    strict_load: bool = True

    def validate(self) -> None:
        for key in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim",
                    "text_len", "text_dim"):
            positive(getattr(self, key), key)
        require(self.dim % self.num_heads == 0, "dim", "a multiple of num_heads", self.dim)
        head_dim = self.dim // self.num_heads
        require(head_dim % 2 == 0, "dim", "dim/num_heads even (RoPE)", self.dim)
        require(len(self.patch_size) == 3 and all(p > 0 for p in self.patch_size), "patch_size",
                "three positive ints [t, h, w]", list(self.patch_size))
        in_range(self.eps, "eps", 0.0, 1e-2)
        one_of(self.pretrained_format, "pretrained_format", ["auto", "wan", "diffusers"])
