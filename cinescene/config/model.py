"""The network: Wan2.1 DiT sizes, CineScene extensions, attention, weights.

Defaults describe the tiny CPU model's *architecture switches* as CineScene
trains them; the sizes live in ``configs/model/{tiny,wan1.3b,wan14b}.yaml``
(the two full sizes share ``configs/model/cinescene_wan.yaml``). What each
switch does to the network is documented in ``cinescene/models``; defaults,
and which are published CineScene facts, in ``docs/MODEL.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ConfigError, at_most, in_range, one_of, optional_positive, positive, require

# Where the weights start (``model.init``): "pretrained" loads the Wan DiT (``model.pretrained``) and,
# when the model builds VGGT, ``model.scene.vggt.weights``; "random" starts from random initialisation.
INIT_CHOICES = ("pretrained", "random")

# Upper bound on the DiT width: 3x Wan2.1-14B's 5120. Beyond it the model cannot be built on any
# current device, and a typo (an extra zero) would only show as an allocation failure minutes in.
MAX_DIM = 16384


@dataclass
class VGGTConfig:
    """VGGT aggregator (and camera head) size; defaults are facebook/VGGT-1B."""

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    # Alternating frame/global block pairs of the aggregator.
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    # Blocks of the DINOv2 ViT that VGGT uses as its patch embedding (ViT-L/14: 24).
    patch_embed_depth: int = 24
    # Base frequency of the aggregator's 2D RoPE (VGGT: 100).
    rope_freq: float = 100.0
    # Transformer blocks of the camera head's trunk (VGGT: 4); only built for pose estimation.
    camera_head_depth: int = 4
    # The VGGT-1B state dict (aggregator.*, camera_head.*): a local .pt/.pth/.safetensors or its directory,
    # or the repo id facebook/VGGT-1B in the local Hugging Face cache (cinescene/hub.py).
    weights: str | None = None

    def validate(self) -> None:
        positive(self.img_size, "img_size")
        positive(self.patch_size, "patch_size")
        require(self.img_size % self.patch_size == 0, "img_size", "a multiple of patch_size", self.img_size)
        require(self.embed_dim % self.num_heads == 0, "embed_dim", "a multiple of num_heads", self.embed_dim)
        # The 2D RoPE splits each head in halves (y, x), each rotated in pairs.
        require(
            (self.embed_dim // self.num_heads) % 4 == 0,
            "embed_dim",
            "embed_dim/num_heads a multiple of 4 (2D RoPE)",
            self.embed_dim,
        )
        positive(self.depth, "depth")
        positive(self.patch_embed_depth, "patch_embed_depth")
        positive(self.mlp_ratio, "mlp_ratio")
        positive(self.rope_freq, "rope_freq")
        require(
            self.num_register_tokens >= 0, "num_register_tokens", "a value >= 0", self.num_register_tokens
        )
        require(self.camera_head_depth >= 0, "camera_head_depth", "a value >= 0", self.camera_head_depth)


@dataclass
class SceneContextConfig:
    """Scene-context tokens appended after the video tokens."""

    enabled: bool = True
    vggt: VGGTConfig = field(default_factory=VGGTConfig)
    # Context tokens from VGGT aggregator features (projected into the DiT width).
    vggt_tokens: bool = True
    # Aggregator layers whose 2*embed_dim features are averaged into the context
    # (python indices into the depth outputs; -1 = last, as VGGT's camera head uses).
    layers: list[int] = field(default_factory=lambda: [-1])
    # How VGGT's patch grid is resized to the video's latent patch grid:
    # "bilinear" (antialiased; VGGT's 37-wide grid is smaller than Wan's 52) or "area".
    pooling: str = "bilinear"
    # Also feed the scene images' latents through the DiT's own patch embedding.
    pixel_context: bool = False
    # "shared": context tokens get the video's timestep; "clean": t = 0. Clean context with
    # attention.mask=context_readonly makes the context step-independent, which is what lets
    # sampling cache its keys/values (cinescene.models.context_cache); "clean" alone does not.
    timestep: str = "clean"
    # Anchor the scene to the camera (ours, off): each scene image's pose relative to the target's
    # first frame, inv(C_target_0) @ C_scene_i, goes through a zero-initialised Linear(12, dim) added
    # to that image's context tokens, so the model need not infer from the features alone where the
    # first frame looks within the scene. Zero-initialised: switching it on changes nothing at first.
    pose_embedding: bool = False

    def validate(self) -> None:
        require(len(self.layers) > 0, "layers", "at least one layer index", list(self.layers))
        depth = self.vggt.depth
        require(
            all(-depth <= i < depth for i in self.layers),
            "layers",
            f"indices in [-{depth}, {depth - 1}] (vggt.depth={depth})",
            list(self.layers),
        )
        one_of(self.pooling, "pooling", ["bilinear", "area"])
        one_of(self.timestep, "timestep", ["shared", "clean"])
        if self.enabled:
            require(
                self.vggt_tokens or self.pixel_context,
                "vggt_tokens",
                "vggt_tokens or pixel_context on when the scene context is enabled",
                self.vggt_tokens,
            )


@dataclass
class CameraConfig:
    """ReCamMaster-style camera conditioning of the target trajectory."""

    enabled: bool = True
    # Cameras are expressed relative to this latent frame's camera: the 12-d input per
    # frame is [R|t] of inv(C_ref) @ C_i (OpenCV camera-to-world, metres).
    reference: str = "first"
    # ReCamMaster's identity-initialised Linear(dim, dim) on the self-attention output.
    projector: bool = True

    def validate(self) -> None:
        one_of(self.reference, "reference", ["first"])


@dataclass
class AttentionConfig:
    # "auto": fused Triton kernel on CUDA, else flash-attn if installed, else torch SDPA.
    # "math": explicit matmul reference (slow; tests and FLOP counting).
    backend: str = "auto"
    # "full": every token sees every token; "context_readonly": context queries see context keys only.
    mask: str = "full"

    def validate(self) -> None:
        one_of(self.backend, "backend", ["auto", "fused", "flash", "sdpa", "math"])
        one_of(self.mask, "mask", ["full", "context_readonly"])


@dataclass
class DataShapeConfig:
    """The sample shape `cinescene model info` counts tokens and FLOPs for.

    Unset fields come from the data section (data.synth.frames / size,
    data.scene_images), which is what the tiny CPU runs train on.
    """

    frames: int | None = None
    # [H, W] of the video in pixels.
    size: list[int] | None = None
    scene_images: int | None = None
    # [H, W] of the scene images in pixels (default: the video size).
    scene_size: list[int] | None = None
    # "wan": VAE latents, stride (4, 8, 8); "none": pixel proxy, stride (4, pool, pool)
    # with pool = data.pixel_pool.
    encoder: str = "wan"

    def validate(self) -> None:
        if self.frames is not None:
            require(
                self.frames >= 1 and (self.frames - 1) % 4 == 0,
                "frames",
                "1 + 4k frames (Wan's causal VAE stride)",
                self.frames,
            )
        for name in ("size", "scene_size"):
            value = getattr(self, name)
            if value is not None:
                require(len(value) == 2 and all(s > 0 for s in value), name, "[H, W] > 0", list(value))
        optional_positive(self.scene_images, "scene_images")
        one_of(self.encoder, "encoder", ["wan", "none"])


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
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    freq_dim: int = 256
    text_len: int = 512
    text_dim: int = 4096
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    scene: SceneContextConfig = field(default_factory=SceneContextConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    data_shape: DataShapeConfig = field(default_factory=DataShapeConfig)
    # Glob patterns over parameter names that train; everything else is frozen.
    trainable: list[str] = field(default_factory=lambda: ["*"])
    # Patterns always frozen, applied after `trainable` (VGGT stays frozen by default).
    frozen: list[str] = field(default_factory=lambda: ["scene_encoder.vggt.*"])
    # Recompute each DiT block in backward (torch.utils.checkpoint, non-reentrant).
    activation_checkpointing: bool = False
    # "pretrained" (the default: CineScene fine-tunes a pretrained Wan2.1): `cinescene train` refuses
    # to start while `pretrained` or (when VGGT is built) `scene.vggt.weights` is unset. "random":
    # train from random initialisation on purpose (the tiny model, tests); rank 0 warns once.
    init: str = "pretrained"
    # Pretrained DiT weights: a .safetensors, a sharded index .json, a .pth, a directory holding one (a
    # diffusers pipeline root: its transformer/), or a repo id in the local Hugging Face cache
    # (cinescene/hub.py).
    pretrained: str | None = None
    pretrained_format: str = "auto"
    strict_load: bool = True

    def validate(self) -> None:
        for key in (
            "dim",
            "ffn_dim",
            "num_heads",
            "num_layers",
            "in_dim",
            "out_dim",
            "freq_dim",
            "text_len",
            "text_dim",
        ):
            positive(getattr(self, key), key)
        at_most(
            self.dim,
            "dim",
            MAX_DIM,
            f"the widest Wan2.1 DiT (14B) has dim 5120; at {MAX_DIM} one block "
            "alone holds over 3 billion parameters",
        )
        require(self.dim % self.num_heads == 0, "dim", "a multiple of num_heads", self.dim)
        head_dim = self.dim // self.num_heads
        require(head_dim % 2 == 0, "dim", "dim/num_heads even (RoPE)", self.dim)
        require(self.freq_dim % 2 == 0, "freq_dim", "an even value (sin/cos halves)", self.freq_dim)
        require(
            len(self.patch_size) == 3 and all(p > 0 for p in self.patch_size),
            "patch_size",
            "three positive ints [t, h, w]",
            list(self.patch_size),
        )
        # Scene images become one latent frame each; a temporal patch > 1 cannot embed them.
        if self.scene.enabled and self.scene.pixel_context:
            require(
                self.patch_size[0] == 1,
                "patch_size",
                "a temporal patch of 1 with scene.pixel_context",
                list(self.patch_size),
            )
        in_range(self.eps, "eps", 0.0, 1e-2)
        one_of(self.pretrained_format, "pretrained_format", ["auto", "wan", "diffusers"])
        one_of(self.init, "init", INIT_CHOICES)
        if self.init == "random":
            for key, path in self.weight_paths().items():
                if path:
                    raise ConfigError(
                        key,
                        f"set to {path!r} with init=random, which loads no weights "
                        "(unset it, or set init=pretrained)",
                    )
        require(
            len(self.trainable) > 0,
            "trainable",
            "at least one pattern ('*' trains everything)",
            list(self.trainable),
        )

    def builds_vggt(self) -> bool:
        """Whether the network holds a VGGT aggregator (it is built only for VGGT-token context)."""
        return self.scene.enabled and self.scene.vggt_tokens

    def weight_paths(self) -> dict[str, str | None]:
        """The weight files ``init=pretrained`` loads, by key path relative to this section."""
        paths = {"pretrained": self.pretrained}
        if self.builds_vggt():
            paths["scene.vggt.weights"] = self.scene.vggt.weights
        return paths
