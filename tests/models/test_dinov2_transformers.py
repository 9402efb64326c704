"""Our DINOv2 patch embedding (VGGT's ``aggregator.patch_embed``) equals transformers' DINOv2 with registers.

VGGT builds DINOv2 ViT-L/14 with 4 register tokens, layer scale 1.0, LayerNorm
eps 1e-6 and antialiased bicubic resizing of the position embedding
(``interpolate_antialias=True, interpolate_offset=0``): transformers'
``Dinov2WithRegistersModel`` is that network. Both are built at a tiny size,
our random weights are copied across, and the final-normed patch tokens are
compared at the native size and at non-square sizes (resized position
embedding).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cinescene.models.vggt.dinov2 import DinoViT

from .helpers import randomize

transformers = pytest.importorskip("transformers")

SIZE = dict(
    img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, num_register_tokens=4
)


def ours() -> DinoViT:
    model = DinoViT(**SIZE, init_values=1.0).eval()
    randomize(model, seed=0, std=0.2)
    return model


def reference():
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=SIZE["embed_dim"],
        num_hidden_layers=SIZE["depth"],
        num_attention_heads=SIZE["num_heads"],
        mlp_ratio=int(SIZE["mlp_ratio"]),
        image_size=SIZE["img_size"],
        patch_size=SIZE["patch_size"],
        num_register_tokens=SIZE["num_register_tokens"],
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_act="gelu",
        attn_implementation="eager",
    )
    return transformers.Dinov2WithRegistersModel(config).eval()


def to_transformers(state, hf_keys):
    """Our DinoViT state dict under transformers' names (q/k/v split out of our fused qkv)."""
    if any(".attention.q_proj." in k for k in hf_keys):  # transformers >= 5
        q, k, v, o = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
    else:
        q, k, v, o = (
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
            "attention.output.dense",
        )
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.register_tokens": state["register_tokens"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    for i in range(SIZE["depth"]):
        ours_, theirs = f"blocks.{i}.", f"encoder.layer.{i}."
        for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for p in ("weight", "bias"):
                out[f"{theirs}{name}.{p}"] = state[f"{ours_}{name}.{p}"]
        for p in ("weight", "bias"):
            for target, part in zip((q, k, v), state[f"{ours_}attn.qkv.{p}"].chunk(3, dim=0)):
                out[f"{theirs}{target}.{p}"] = part
            out[f"{theirs}{o}.{p}"] = state[f"{ours_}attn.proj.{p}"]
        out[f"{theirs}layer_scale1.lambda1"] = state[f"{ours_}ls1.gamma"]
        out[f"{theirs}layer_scale2.lambda1"] = state[f"{ours_}ls2.gamma"]
    return out


@pytest.mark.parametrize("height, width", [(56, 56), (42, 70), (98, 56)])
def test_patch_tokens_equal_transformers_dinov2_with_registers(height, width):
    model, hf = ours(), reference()
    hf.load_state_dict(to_transformers(model.state_dict(), hf.state_dict().keys()), strict=True)
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(images)
        expected = hf(pixel_values=images).last_hidden_state[:, 1 + SIZE["num_register_tokens"] :]
    diff = (got - expected).abs().max().item()
    print(f"DINOv2 patch embed vs transformers at {height}x{width}: max abs diff {diff:.1e}")
    assert got.shape == expected.shape == (2, (height // 14) * (width // 14), SIZE["embed_dim"])
    assert diff < 1e-5


def test_non_square_sizes_exercise_the_antialiased_resize():
    """At 42x70 the 4x4 position grid shrinks to 3 rows: antialiasing changes the values (so the test above
    would catch a plain bicubic resize)."""
    model = ours()
    with torch.no_grad():
        resized = model.position_embedding(42, 70, torch.float32)[:, 1:]
        grid = model.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        plain = F.interpolate(grid, size=(3, 5), mode="bicubic", align_corners=False)
    plain = plain.permute(0, 2, 3, 1).reshape(1, 15, -1)
    assert resized.shape == plain.shape and (resized - plain).abs().max() > 1e-3
