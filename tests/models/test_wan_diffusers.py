"""Our Wan2.1 DiT equals diffusers' WanTransformer3DModel (fp32), and the key mapping round-trips."""

from __future__ import annotations

import pytest
import torch

from cinescene.config.model import ModelConfig
from cinescene.models import build_model, diffusers_to_wan, wan_to_diffusers
from cinescene.models.key_mapping import detect_layout
from cinescene.models.weights import assign_state_dict

diffusers = pytest.importorskip("diffusers")

SIZE = dict(
    heads=2, head_dim=16, in_dim=4, out_dim=4, text_dim=24, freq_dim=32, ffn_dim=48, layers=2, text_len=7
)


def diffusers_model(seed: int = 0):
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=SIZE["heads"],
        attention_head_dim=SIZE["head_dim"],
        in_channels=SIZE["in_dim"],
        out_channels=SIZE["out_dim"],
        text_dim=SIZE["text_dim"],
        freq_dim=SIZE["freq_dim"],
        ffn_dim=SIZE["ffn_dim"],
        num_layers=SIZE["layers"],
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
    ).eval()
    with torch.no_grad():  # random everything, including the zero-initialised output layer
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def our_model():
    cfg = ModelConfig(
        dim=SIZE["heads"] * SIZE["head_dim"],
        ffn_dim=SIZE["ffn_dim"],
        num_heads=SIZE["heads"],
        num_layers=SIZE["layers"],
        in_dim=SIZE["in_dim"],
        out_dim=SIZE["out_dim"],
        freq_dim=SIZE["freq_dim"],
        text_len=SIZE["text_len"],
        text_dim=SIZE["text_dim"],
    )
    cfg.scene.enabled = False
    cfg.camera.enabled = False
    return build_model(cfg).eval()


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, SIZE["in_dim"], 3, 6, 8, generator=gen)
    t = torch.tensor([15.0, 873.0])
    text = torch.randn(2, SIZE["text_len"], SIZE["text_dim"], generator=gen)
    return x, t, text


def test_diffusers_weights_give_the_same_forward():
    reference = diffusers_model()
    ours = our_model()
    state = reference.state_dict()
    assert detect_layout(state) == "diffusers"
    report = assign_state_dict(ours, diffusers_to_wan(state))
    assert report.ok and not report.fresh
    x, t, text = inputs()
    with torch.no_grad():
        expected = reference(x, t, text, return_dict=False)[0]
        got = ours(x, t, text)
    diff = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    print(f"diffusers -> ours: max abs diff {diff:.3e} (output max {scale:.2f})")
    assert got.shape == expected.shape
    assert diff < 1e-4 * max(1.0, scale)


def test_our_weights_load_into_diffusers_and_round_trip():
    ours = our_model()
    with torch.no_grad():
        for i, p in enumerate(ours.parameters()):
            p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(i))
    ours_state = ours.state_dict()
    as_diffusers = wan_to_diffusers(ours_state)
    reference = diffusers_model(seed=5)
    assert set(as_diffusers) == set(reference.state_dict())
    reference.load_state_dict(as_diffusers, strict=True)
    back = diffusers_to_wan(as_diffusers)
    assert set(back) == set(ours_state) and all(back[k] is ours_state[k] for k in back)
    x, t, text = inputs(seed=3)
    with torch.no_grad():
        diff = (reference(x, t, text, return_dict=False)[0] - ours(x, t, text)).abs().max().item()
    print(f"ours -> diffusers: max abs diff {diff:.3e}")
    assert diff < 1e-3


def test_mapping_leaves_cinescene_keys_alone():
    keys = [
        "blocks.3.cam_encoder.weight",
        "blocks.3.projector.bias",
        "scene_encoder.projector.1.weight",
        "blocks.0.norm3.weight",
        "head.modulation",
        "blocks.1.modulation",
    ]
    mapped = wan_to_diffusers(dict.fromkeys(keys))
    assert list(mapped) == [
        "blocks.3.cam_encoder.weight",
        "blocks.3.projector.bias",
        "scene_encoder.projector.1.weight",
        "blocks.0.norm2.weight",
        "scale_shift_table",
        "blocks.1.scale_shift_table",
    ]
    assert list(diffusers_to_wan(mapped)) == keys
