"""Activation memory of one micro batch on one rank, in closed form.

Counted from the model's code (cinescene/models/wan.py and cinescene_model.py),
tensor by tensor: what autograd saves for the backward, in which dtype. The
compute dtype (``cb``: 2 bytes in bf16, 4 in fp32) is the parameters' dtype;
norms, modulation and residual adds run in fp32 (4 bytes) whatever it is.
``tests/plan/test_activations.py`` checks each count against what autograd
really saves (saved-tensor hooks); the fake-tensor traces check the peak.

One DiT block saves, per token (d = dim, f = ffn_dim, H = heads):

* 6 fp32 d-wide tensors: the inputs of norm1/norm2 (fp32 copies), the fp32
  modulated inputs (norm1, norm2), the residual adds' fp32 operands (2);
* 9 compute-dtype d-wide tensors: the Linear inputs (q/k/v share one, o, the
  FFN's first), self- and cross-attention q/k/v/out as the kernel saves them,
  the cross-attention's input;
* 2 compute-dtype f-wide tensors: the FFN hidden (GELU input) and GELU output;
* 2 fp32 H-wide log-sum-exps (self, cross) and 4 fp32 norm statistics;
* with ``qk_norm``, 3 RMSNorms (self q/k, cross q) of one fp32 and one
  compute-dtype d-wide tensor and a scalar each; with ``cross_attn_norm``, one
  fp32 d-wide input and two statistics; the camera ``projector`` one more
  Linear input; the ``context_readonly`` mask one more attention output (its
  two calls' outputs are concatenated).

Per text token each block keeps the cross-attention keys and values (and, with
``qk_norm``, the keys' norm input).

At the backward's peak (the last block, right after its recomputation with
activation checkpointing) a rank holds: what the forward saved before the
blocks, each block's input (all its saved tensors without checkpointing), one
block's saved tensors, and the gradient flowing in with the temporaries of the
block's last residual add (3 compute-dtype and 3 fp32 d-wide tensors per token).
The head's saved tensors are gone by then (its backward ran first), so they
count only at the end of the forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from cinescene.config.model import ModelConfig
from cinescene.models.flops import SampleShape, TokenCounts

FP32 = 4


class PlannedBackend(str, Enum):
    """The attention implementation the plan assumes: ``model.attention.backend`` resolved on the device."""

    FUSED = "fused"  # our Triton kernel: saves out + log-sum-exp; backward adds a fp32 row statistic
    FLASH = "flash"  # flash-attn: the same, plus a fp32 dq accumulator in the backward
    SDPA = "sdpa"  # torch SDPA (flash backend on CUDA, the flash CPU kernel on the CPU)
    MATH = "math"  # explicit matmuls: the full fp32 probability matrix is saved


def planned_backend(configured: str, on_gpu: bool) -> PlannedBackend:
    """``auto`` resolves as cinescene.models.attention does: the fused kernel on a GPU, SDPA on the CPU."""
    if configured == "auto":
        return PlannedBackend.FUSED if on_gpu else PlannedBackend.SDPA
    return PlannedBackend(configured)


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes on one rank for one micro batch; see the module doc for when each part is alive."""

    batch: int  # the micro batch's tensors on the device, with the noise and the noised input
    saved_before_blocks: int  # embeddings, scene projector, RoPE tables: alive until the backward ends
    head: int  # the head's saved tensors (released before the blocks' backward)
    per_block: int  # kept per block through the forward (its input with checkpointing, else all it saves)
    block_saved: int  # one block's saved tensors, as its recomputation holds them
    backward_transient: int  # the incoming gradient and the last residual add's temporaries
    attention_workspace: int  # the attention backward's own buffers
    ffn_saved: int  # of block_saved: the FFN's part, released before the attention's backward starts
    scene_encoder: int  # the frozen VGGT's forward temporaries (no autograd)
    num_blocks: int
    recompute: bool

    @property
    def forward_peak(self) -> int:
        scene = self.saved_before_blocks + self.scene_encoder
        blocks = self.saved_before_blocks + self.num_blocks * self.per_block + self.head
        return self.batch + max(scene, blocks)

    @property
    def backward_peak(self) -> int:
        held = self.saved_before_blocks + self.num_blocks * self.per_block
        recomputed = self.block_saved if self.recompute else 0
        at_attention = recomputed - self.ffn_saved + self.attention_workspace
        return self.batch + held + self.backward_transient + max(recomputed, at_attention)

    @property
    def peak(self) -> int:
        return max(self.forward_peak, self.backward_peak)


def block_bytes_per_token(model: ModelConfig, cb: int, readonly_context: bool) -> int:
    """Bytes one DiT block saves per token (see the module doc for the list)."""
    d, f = model.dim, model.ffn_dim
    per = 6 * FP32 * d + 9 * cb * d + 2 * cb * f + 2 * FP32 * model.num_heads + 4 * FP32
    if cb == FP32:
        per -= FP32 * d  # in an fp32 run norm1's fp32 copy of the input is the input itself
    if model.qk_norm:
        per += 3 * (FP32 * d + cb * d + FP32)
    if model.cross_attn_norm:
        per += FP32 * d + 2 * FP32
    if model.camera.enabled and model.camera.projector:
        per += cb * d
    if readonly_context:
        per += cb * d
    return per


def block_bytes_per_text_token(model: ModelConfig, cb: int) -> int:
    """Bytes one block saves per text token: cross-attention keys and values (and the keys' RMSNorm input)."""
    d = model.dim
    return 2 * cb * d + (FP32 * d + cb * d + FP32 if model.qk_norm else 0)


def batch_bytes(model: ModelConfig, shape: SampleShape, tokens: TokenCounts, *, noised: bool = True) -> int:
    """One sample's tensors the model reads (fp32, docs/CONTRACTS.md); ``noised``: with the noise and the
    noised input the objective adds on the device."""
    video = model.in_dim * shape.latent_frames * shape.latent_height * shape.latent_width
    total = (3 if noised else 1) * video + model.text_len * model.text_dim + 16 * shape.latent_frames
    if tokens.vggt_context:
        total += shape.scene_images * 3 * shape.scene_height * shape.scene_width
    if tokens.pixel_context:
        total += shape.scene_images * model.in_dim * shape.scene_latent_height * shape.scene_latent_width
    return FP32 * total


def _scene_encoder_bytes(model: ModelConfig, shape: SampleShape, cb: int) -> int:
    """The frozen VGGT's forward temporaries per sample: one block's worth over all images' tokens, the
    resized fp32 images, and the requested layer's (frame, global) features."""
    from cinescene.models.vggt import vggt_grid

    vggt = model.scene.vggt
    rows, cols = vggt_grid(shape.scene_height, shape.scene_width, vggt.img_size, vggt.patch_size)
    tokens = shape.scene_images * (1 + vggt.num_register_tokens + rows * cols)
    c, hidden = vggt.embed_dim, int(vggt.embed_dim * vggt.mlp_ratio)
    block = tokens * cb * (6 * c + 2 * hidden)
    images = 2 * FP32 * shape.scene_images * 3 * (rows * vggt.patch_size) * (cols * vggt.patch_size)
    return block + images + tokens * cb * 2 * c * len(model.scene.layers)


def activation_memory(
    model: ModelConfig,
    shape: SampleShape,
    tokens: TokenCounts,
    *,
    micro_batch: int,
    sequence: int,
    compute_bytes: int,
    backend: PlannedBackend,
) -> ActivationMemory:
    """Activation bytes on one rank for ``micro_batch`` samples sharded over ``sequence`` ranks."""
    b, cb, d = micro_batch, compute_bytes, model.dim
    total = tokens.total
    local = math.ceil(total / sequence)  # tokens per rank (the sequence is padded to a multiple)
    heads_local = model.num_heads // sequence if model.num_heads % sequence == 0 else model.num_heads
    readonly = model.attention.mask == "context_readonly" and tokens.context > 0

    # In an fp32 run the casts to the compute dtype are the batch's own tensors, not copies.
    copy = 0 if cb == FP32 else cb
    latent = model.in_dim * shape.latent_frames * shape.latent_height * shape.latent_width
    before = b * latent * copy  # the patch embedding's input, in the compute dtype
    if tokens.vggt_context:  # projector: fp32 LayerNorm input and statistics, Linear input, GELU in/out
        c2 = 2 * model.scene.vggt.embed_dim
        before += b * tokens.vggt_context * (FP32 * c2 + 2 * FP32 + cb * c2 + 2 * cb * d)
    if tokens.pixel_context:
        pixel = shape.scene_images * model.in_dim * shape.scene_latent_height * shape.scene_latent_width
        before += b * pixel * cb
    before += b * model.text_len * (model.text_dim * copy + 2 * d * cb)  # text embedding: input, GELU in/out
    groups = 2 if tokens.context and model.scene.timestep == "clean" else 1
    before += b * groups * 5 * FP32 * d  # time embedding and projection (per timestep group)
    head_dim = d // model.num_heads
    before += 2 * FP32 * total * (head_dim // 2)  # RoPE cos/sin tables of the whole sequence

    # The head: LayerNorm fp32 input and statistics, modulated fp32 input, Linear input; on the video tokens
    # (one rank), on this rank's shard (sequence parallel: the outputs are gathered afterwards).
    # In an fp32 run the LayerNorm's input is the last block's whole output, context tokens included.
    head_tokens = tokens.video if sequence == 1 else local
    head = (
        b * head_tokens * (FP32 * d + 2 * FP32 + cb * d)
        + b * (local if cb == FP32 else head_tokens) * FP32 * d
    )

    per_token = block_bytes_per_token(model, cb, readonly)
    block = b * local * per_token + b * model.text_len * block_bytes_per_text_token(model, cb)
    ffn = b * local * 2 * cb * model.ffn_dim
    if backend is PlannedBackend.MATH:
        # fp32 copies of q/k/v and the fp32 probabilities of self- and cross-attention
        keys = tokens.video * total + tokens.context**2 if readonly else total * total
        block += b * heads_local * (keys + total * model.text_len) * FP32 + b * local * 3 * FP32 * d
    workspace = {
        PlannedBackend.FUSED: b * heads_local * total * FP32,
        PlannedBackend.FLASH: b * local * d * FP32 + b * heads_local * total * FP32,
        PlannedBackend.SDPA: b * local * d * FP32 + b * heads_local * total * FP32,
        PlannedBackend.MATH: 0,
    }[backend]
    recompute = model.activation_checkpointing
    block_input = b * local * d * cb
    if sequence > 1:  # the split pads the whole sequence into a new tensor: block 0's input keeps all of it
        before += b * (local * sequence - local) * d * cb
    return ActivationMemory(
        batch=b * batch_bytes(model, shape, tokens),
        saved_before_blocks=before,
        head=head,
        # Without checkpointing an fp32 block's input is what its first LayerNorm saves (block_bytes_per_token
        # leaves it out: with checkpointing it is the checkpoint's).
        per_block=block_input if recompute else block + (block_input if cb == FP32 else 0),
        block_saved=block,
        backward_transient=b * local * d * (3 * cb + 3 * FP32),
        attention_workspace=workspace,
        ffn_saved=ffn,
        scene_encoder=b * _scene_encoder_bytes(model, shape, cb) if tokens.vggt_context else 0,
        num_blocks=model.num_layers,
        recompute=recompute,
    )
