"""The plan's activation counts against what autograd really saves (saved-tensor hooks), at small sizes.

Per token and per text token the counts must be exact: the differences between
two sequence lengths (and two text lengths) leave only the parts that scale
with them. The fake-tensor traces (test_trace.py) check the peak at real size.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cinescene.config.model import AttentionConfig, CameraConfig
from cinescene.models.attention import SelfAttentionCall, attention
from cinescene.models.flops import SampleShape, token_counts
from cinescene.models.wan import BlockContext, WanBlock
from cinescene.plan.activations import (
    PlannedBackend,
    activation_memory,
    block_bytes_per_text_token,
    block_bytes_per_token,
)
from tests.models.helpers import tiny_config

from .helpers import SMOKE, config, model_inputs


def saved_bytes(run, exclude) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` executes, except ``exclude``'s."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(seen.values())


def block_saved(model_cfg, dtype, tokens: int, text_tokens: int) -> int:
    torch.manual_seed(0)
    d, heads = model_cfg.dim, model_cfg.num_heads
    with torch.device("cpu"):
        block = WanBlock(
            d,
            model_cfg.ffn_dim,
            heads,
            qk_norm=model_cfg.qk_norm,
            cross_attn_norm=model_cfg.cross_attn_norm,
            camera=model_cfg.camera.enabled,
            camera_projector=model_cfg.camera.enabled and model_cfg.camera.projector,
        ).to(dtype)
    num_video = tokens // 2
    frames = 4
    text = torch.randn(1, text_tokens, d, dtype=dtype)
    cos, sin = torch.randn(tokens, d // heads // 2), torch.randn(tokens, d // heads // 2)
    frame = torch.arange(num_video) * frames // num_video
    ctx = BlockContext(
        e0=torch.randn(1, 2, 6, d),
        text=text,
        rope=(cos, sin),
        self_attention=SelfAttentionCall(num_video, model_cfg.attention.mask, "sdpa"),
        cross_attention=lambda q, k, v: attention(q, k, v, backend="sdpa", kind="cross"),
        num_local_video=num_video,
        camera=torch.randn(1, frames, 12) if model_cfg.camera.enabled else None,
        camera_frame=frame,
    )
    x = torch.randn(1, tokens, d, dtype=dtype, requires_grad=True)
    shared = [*block.parameters(), text, cos, sin, frame, x]
    return saved_bytes(lambda: block(x, ctx), shared)


VARIANTS = {
    "recipe": {},
    "no camera": {"camera": CameraConfig(enabled=False)},
    "camera without projector": {"camera": CameraConfig(projector=False)},
    "context_readonly": {"attention": AttentionConfig(mask="context_readonly")},
    "no qk norm": {"qk_norm": False},
    "no cross-attention norm": {"cross_attn_norm": False},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_block_bytes_per_token_and_text_token_are_what_autograd_saves(variant, dtype):
    model = dataclasses.replace(tiny_config(dim=64, ffn_dim=160, num_heads=4), **VARIANTS[variant])
    cb = torch.tensor([], dtype=dtype).element_size()
    readonly = model.attention.mask == "context_readonly"
    per_token = (block_saved(model, dtype, 96, 8) - block_saved(model, dtype, 64, 8)) / 32
    per_text = (block_saved(model, dtype, 64, 24) - block_saved(model, dtype, 64, 8)) / 16
    print(f"{variant} {dtype}: {per_token:.1f} bytes per token, {per_text:.1f} per text token")
    assert per_token == block_bytes_per_token(model, cb, readonly)
    assert per_text == block_bytes_per_text_token(model, cb)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_whole_model_saved_tensors_match_the_plan_outside_the_blocks(dtype):
    """With activation checkpointing the forward saves the embeddings' and projector's tensors, each block's
    input and the head's: the plan's parts, RoPE tables aside (kept alive by the forward, not saved)."""
    from cinescene.models import build_model

    cfg = config(SMOKE, "model.activation_checkpointing=true")
    torch.manual_seed(0)
    model = build_model(cfg.model, dtype=dtype)
    args, kwargs = model_inputs(cfg)
    shape = SampleShape.from_config(cfg)
    tokens = token_counts(cfg.model, shape)
    plan = activation_memory(
        cfg.model,
        shape,
        tokens,
        micro_batch=1,
        sequence=1,
        compute_bytes=dtype.itemsize,
        backend=PlannedBackend.SDPA,
    )
    rope = 2 * 4 * tokens.total * (cfg.model.dim // cfg.model.num_heads // 2)
    observed = saved_bytes(lambda: model(*args, **kwargs), [*model.parameters(), *args, *kwargs.values()])
    planned = plan.saved_before_blocks - rope + plan.num_blocks * plan.per_block + plan.head
    print(f"{dtype}: saved by the forward {observed:,} bytes; planned {planned:,}")
    assert observed == pytest.approx(planned, rel=0.02)
