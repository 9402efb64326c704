"""The Wan2.1 text-to-video DiT (Wan-Video/Wan2.1 ``wan/modules/model.py``), written for CineScene.

Module and parameter names are Wan's own, so a Wan checkpoint loads with no
renaming: ``patch_embedding``, ``text_embedding.{0,2}``, ``time_embedding.{0,2}``,
``time_projection.1``, ``blocks.N.{self_attn,cross_attn}.{q,k,v,o,norm_q,norm_k}``,
``blocks.N.norm3``, ``blocks.N.ffn.{0,2}``, ``blocks.N.modulation``,
``head.head``, ``head.modulation``. CineScene adds, per block and only when
the camera is enabled, ReCamMaster's ``cam_encoder`` (zero-initialised
Linear(12, dim)) and ``projector`` (identity-initialised Linear(dim, dim)),
so at initialisation the network computes exactly the base DiT.

Differences from the reference that do not change the function: tokens of a
batch share one length (no per-sample padding), the adaLN parameters may
differ between two contiguous token segments (video / context, see
:class:`BlockContext`), and mixed precision is explicit (norms, modulation
and residual adds in fp32, matmuls in the parameter dtype) instead of
autocast regions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .layers import (
    FP32LayerNorm,
    Linear,
    PatchEmbed3d,
    RMSNorm,
    SegmentedModulation,
    normal_parameter,
    sinusoidal_embedding,
)
from .rope import apply_rope

#: (q, k, v) -> out, all (B, L, H, D): how a block runs its self-attention this forward.
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BlockContext:
    """Everything a block needs besides its input tokens, computed once per forward.

    ``tokens`` handed to the blocks are this rank's part of [video ++ context
    (++ padding)]; the first ``num_local_video`` of them are video tokens.
    """

    e0: torch.Tensor  # (B, G, 6, dim) fp32 timestep modulation; G=1 shared, G=2 video/context
    text: torch.Tensor  # (B, text_len, dim) embedded prompt
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin (L_local, head_dim/2)
    self_attention: AttendFn
    cross_attention: AttendFn
    num_local_video: int
    camera: torch.Tensor | None = None  # (B, F, 12) relative [R|t] per latent frame
    camera_frame: torch.Tensor | None = None  # (num_local_video,) frame of each local video token

    @property
    def modulation(self) -> SegmentedModulation:
        return SegmentedModulation(self.num_local_video)


class WanAttention(nn.Module):
    """Wan's self- and cross-attention layers: q/k/v/o Linears, RMSNorm over the full width on q and k."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        attend: AttendFn,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        source = x if context is None else context
        heads = (self.num_heads, self.head_dim)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(source)).unflatten(-1, heads)
        v = self.v(source).unflatten(-1, heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o(attend(q, k, v).flatten(2))


class WanBlock(nn.Module):
    """One DiT block: adaLN self-attention (+ camera), cross-attention to text, adaLN FFN."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        *,
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        camera: bool = False,
        camera_projector: bool = False,
    ):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ffn_dim, dim))
        # shift/scale/gate for self-attention, then for the FFN; added to the shared e0.
        self.modulation = normal_parameter(1, 6, dim, std=dim**-0.5)
        if camera:
            self.cam_encoder = Linear(12, dim, init="zeros")
            if camera_projector:
                self.projector = Linear(dim, dim, init="identity")

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        seg = ctx.modulation
        mod = self.modulation.float().unsqueeze(1) + ctx.e0  # (B, G, 6, dim)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(2)

        h = seg.modulate(self.norm1(x), shift_sa, scale_sa)
        if hasattr(self, "cam_encoder") and ctx.camera is not None:
            # ReCamMaster: the frame's camera embedding is added to the modulated input of
            # self-attention, broadcast over that frame's tokens; context tokens get none.
            # Run even when this shard holds no video token: every rank must use the same
            # parameters, or ZeRO-3's gradient reduction would fall out of step.
            cam = self.cam_encoder(ctx.camera.to(self.cam_encoder.weight.dtype)).float()  # (B, F, dim)
            n = ctx.num_local_video
            h = torch.cat([h[:, :n] + cam[:, ctx.camera_frame], h[:, n:]], dim=1)
        y = self.self_attn(h.type_as(x), ctx.self_attention, rope=ctx.rope)
        if hasattr(self, "projector"):
            y = self.projector(y)
        x = seg.gated_add(x, y, gate_sa)

        x = x + self.cross_attn(self.norm3(x), ctx.cross_attention, context=ctx.text)

        h = seg.modulate(self.norm2(x), shift_ff, scale_ff)
        return seg.gated_add(x, self.ffn(h.type_as(x)), gate_ff)


class WanHead(nn.Module):
    """Output head: adaLN (its own (1, 2, dim) modulation on
    the time embedding) then a zero-initialised Linear."""

    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float = 1e-6):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = Linear(dim, out_dim * math.prod(patch_size), init="zeros")
        self.modulation = normal_parameter(1, 2, dim, std=dim**-0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, seg: SegmentedModulation) -> torch.Tensor:
        """x (B, L, dim); e (B, G, dim) time embeddings per token group."""
        shift, scale = (self.modulation.float().unsqueeze(1) + e.float().unsqueeze(2)).unbind(2)
        return self.head(seg.modulate(self.norm(x), shift, scale).type_as(x))


class WanDiT(nn.Module):
    """Wan2.1 T2V backbone: embeddings, ``num_layers`` blocks, head, and the (un)patchify helpers.

    :class:`cinescene.models.CineSceneModel` builds the token sequence and
    drives these pieces; this class holds only what the reference holds (plus
    the per-block camera modules when ``camera`` is on).
    """

    def __init__(
        self,
        *,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        num_layers: int,
        in_dim: int,
        out_dim: int,
        patch_size: Sequence[int],
        freq_dim: int,
        text_len: int,
        text_dim: int,
        qk_norm: bool = True,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        camera: bool = False,
        camera_projector: bool = False,
    ):
        super().__init__()
        self.dim, self.num_heads, self.freq_dim = dim, num_heads, freq_dim
        self.out_dim, self.text_len = out_dim, text_len
        self.patch_size = tuple(int(p) for p in patch_size)
        self.activation_checkpointing = False

        self.patch_embedding = PatchEmbed3d(in_dim, dim, self.patch_size)
        self.text_embedding = nn.Sequential(
            Linear(text_dim, dim, init="normal"), nn.GELU(approximate="tanh"), Linear(dim, dim, init="normal")
        )
        self.time_embedding = nn.Sequential(
            Linear(freq_dim, dim, init="normal"), nn.SiLU(), Linear(dim, dim, init="normal")
        )
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            [
                WanBlock(
                    dim,
                    ffn_dim,
                    num_heads,
                    qk_norm=qk_norm,
                    cross_attn_norm=cross_attn_norm,
                    eps=eps,
                    camera=camera,
                    camera_projector=camera_projector,
                )
                for _ in range(num_layers)
            ]
        )
        self.head = WanHead(dim, out_dim, self.patch_size, eps)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def compute_dtype(self) -> torch.dtype:
        # A ZeRO-3 partitioned parameter keeps its dtype, so this is safe outside forward hooks.
        return self.patch_embedding.weight.dtype

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, T, H, W) -> tokens (B, T'*H'*W', dim) in (f, h, w) order, and the grid (T', H', W')."""
        pt, ph, pw = self.patch_size
        if x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw:
            raise ValueError(
                f"latent shape {tuple(x.shape[2:])} is not divisible by the patch {self.patch_size}"
            )
        emb = self.patch_embedding(x.to(self.compute_dtype))
        grid = tuple(emb.shape[2:])
        return emb.flatten(2).transpose(1, 2), grid

    def unpatchify(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, F*H*W, out*pt*ph*pw) -> (B, out, F*pt, H*ph, W*pw), Wan's (f h w p q r c) ordering."""
        b = tokens.shape[0]
        f, h, w = grid
        pt, ph, pw = self.patch_size
        u = tokens.reshape(b, f, h, w, pt, ph, pw, self.out_dim)
        u = torch.einsum("bfhwpqrc->bcfphqwr", u)
        return u.reshape(b, self.out_dim, f * pt, h * ph, w * pw)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, L, text_dim) prompt embeddings with L <= text_len -> (B, text_len, dim).

        Shorter text is zero-padded to ``text_len`` before the embedding, as
        Wan pads umT5's output: cross-attention always attends over text_len
        keys (the padded rows embed to a constant, not to nothing), so a
        prompt gives the reference's result whether or not it came padded.
        """
        text_dim = self.text_embedding[0].in_features
        if text.dim() != 3 or text.shape[-1] != text_dim:
            raise ValueError(f"text {tuple(text.shape)} must be (B, L, text_dim={text_dim})")
        if text.shape[1] > self.text_len:
            raise ValueError(f"text has {text.shape[1]} tokens, more than model.text_len={self.text_len}")
        if text.shape[1] < self.text_len:
            text = F.pad(text, (0, 0, 0, self.text_len - text.shape[1]))
        return self.text_embedding(text.to(self.compute_dtype))

    def embed_time(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timesteps (B, G) -> e (B, G, dim) for the head, e0 (B, G, 6, dim) fp32 for the blocks."""
        b, groups = timesteps.shape
        sinusoid = sinusoidal_embedding(self.freq_dim, timesteps.reshape(-1))
        e = self.time_embedding(sinusoid.to(self.compute_dtype))
        e0 = self.time_projection(e).float().unflatten(1, (6, self.dim))
        return e.float().reshape(b, groups, self.dim), e0.reshape(b, groups, 6, self.dim)

    def run_blocks(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """All blocks; each recomputed in backward when activation checkpointing is on.

        Non-reentrant checkpointing: it composes with ZeRO-3's parameter hooks
        (parameters are re-gathered in the recomputation) and with inputs that
        do not require grad.
        """
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, ctx, use_reentrant=False)
            else:
                x = block(x, ctx)
        return x
