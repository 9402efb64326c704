"""VGGT aggregator and camera head: the published key layout, tiny forward, weights, preprocessing."""

from __future__ import annotations

import pytest
import torch

from cinescene.config.model import VGGTConfig
from cinescene.errors import CineSceneError
from cinescene.models import build_model
from cinescene.models.vggt import VGGT, load_vggt_weights, preprocess_images, quaternion_to_matrix, vggt_grid

from .helpers import randomize, recorded_reads, tiny_config

# facebook/VGGT-1B, read off facebookresearch/vggt (vggt/models/aggregator.py, vggt/layers/*,
# vggt/heads/camera_head.py): DINOv2 ViT-L/14 (518 px -> 37x37 patches) as patch_embed, 24 frame and
# 24 global blocks with per-head qk LayerNorm (head dim 64), camera head on the 2048-wide camera token.
C, HEAD, MLP = 1024, 64, 4096


def block_keys(prefix, dim, mlp, qk_norm_dim=None):
    keys = {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "ls1.gamma": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        "mlp.fc1.weight": (mlp, dim),
        "mlp.fc1.bias": (mlp,),
        "mlp.fc2.weight": (dim, mlp),
        "mlp.fc2.bias": (dim,),
        "ls2.gamma": (dim,),
    }
    if qk_norm_dim:
        keys.update(
            {
                "attn.q_norm.weight": (qk_norm_dim,),
                "attn.q_norm.bias": (qk_norm_dim,),
                "attn.k_norm.weight": (qk_norm_dim,),
                "attn.k_norm.bias": (qk_norm_dim,),
            }
        )
    return {f"{prefix}.{k}": v for k, v in keys.items()}


def expected_vggt_1b_layout():
    table = {
        "aggregator.camera_token": (1, 2, 1, C),
        "aggregator.register_token": (1, 2, 4, C),
        "aggregator.patch_embed.cls_token": (1, 1, C),
        "aggregator.patch_embed.pos_embed": (1, 1 + 37 * 37, C),
        "aggregator.patch_embed.register_tokens": (1, 4, C),
        "aggregator.patch_embed.mask_token": (1, C),
        "aggregator.patch_embed.patch_embed.proj.weight": (C, 3, 14, 14),
        "aggregator.patch_embed.patch_embed.proj.bias": (C,),
        "aggregator.patch_embed.norm.weight": (C,),
        "aggregator.patch_embed.norm.bias": (C,),
        "camera_head.token_norm.weight": (2 * C,),
        "camera_head.token_norm.bias": (2 * C,),
        "camera_head.trunk_norm.weight": (2 * C,),
        "camera_head.trunk_norm.bias": (2 * C,),
        "camera_head.empty_pose_tokens": (1, 1, 9),
        "camera_head.embed_pose.weight": (2 * C, 9),
        "camera_head.embed_pose.bias": (2 * C,),
        "camera_head.poseLN_modulation.1.weight": (6 * C, 2 * C),
        "camera_head.poseLN_modulation.1.bias": (6 * C,),
        "camera_head.pose_branch.fc1.weight": (C, 2 * C),
        "camera_head.pose_branch.fc1.bias": (C,),
        "camera_head.pose_branch.fc2.weight": (9, C),
        "camera_head.pose_branch.fc2.bias": (9,),
    }
    for i in range(24):
        table.update(block_keys(f"aggregator.patch_embed.blocks.{i}", C, MLP))
        table.update(block_keys(f"aggregator.frame_blocks.{i}", C, MLP, HEAD))
        table.update(block_keys(f"aggregator.global_blocks.{i}", C, MLP, HEAD))
    for i in range(4):
        table.update(block_keys(f"camera_head.trunk.{i}", 2 * C, 4 * 2 * C))
    return table


def test_full_size_layout_matches_vggt_1b():
    with torch.device("meta"):
        model = VGGT(VGGTConfig(), camera_head=True)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = expected_vggt_1b_layout()
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    print(f"VGGT-1B layout: {len(ours)} tensors, {sum(p.numel() for p in model.parameters()):,} parameters")


def tiny_vggt(camera_head=True, seed=0):
    cfg = tiny_config().scene.vggt
    model = VGGT(cfg, camera_head=camera_head).eval()
    randomize(model, seed=seed, std=0.2)
    return model


def test_tiny_aggregator_outputs_and_early_stop():
    model = tiny_vggt()
    images = torch.rand(2, 3, 3, 56, 56)
    with torch.no_grad():
        every = model.features(images, layers=range(2))
        first_only = model.features(images, layers=[0])
    patches = 4 * 4
    assert set(every) == {0, 1} and every[1].shape == (2, 3, 1 + 4 + patches, 64)
    assert list(first_only) == [0] and torch.allclose(first_only[0], every[0])
    assert model.features(images, layers=[-1]).keys() == {1}


def test_first_image_defines_the_frame():
    """Images after the first are interchangeable; the first one is not (its own special tokens)."""
    model = tiny_vggt()
    images = torch.rand(1, 3, 3, 56, 56)
    with torch.no_grad():
        out = model.features(images, [1])[1]
        swapped = model.features(images[:, [0, 2, 1]], [1])[1]
        new_first = model.features(images[:, [1, 0, 2]], [1])[1]
    assert torch.allclose(out[:, [0, 2, 1]], swapped, atol=1e-5)
    assert not torch.allclose(out[:, [1, 0, 2]], new_first, atol=1e-3)


def test_camera_head_gives_rotations_and_intrinsics():
    model = tiny_vggt()
    with torch.no_grad():
        extrinsics, intrinsics = model.estimate_cameras(torch.rand(2, 3, 3, 60, 80))
    assert extrinsics.shape == (2, 3, 3, 4) and intrinsics.shape == (2, 3, 3, 3)
    rot = extrinsics[..., :3]
    eye = torch.eye(3).expand_as(rot)
    assert torch.allclose(rot @ rot.transpose(-1, -2), eye, atol=1e-4)
    quat = torch.tensor([0.0, 0.0, torch.sin(torch.tensor(0.5)), torch.cos(torch.tensor(0.5))])
    expected = torch.tensor([[0.5403, -0.8415, 0.0], [0.8415, 0.5403, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(quaternion_to_matrix(quat), expected, atol=1e-4)  # 1 rad about z, xyzw


def test_weights_load_key_compatibly(tmp_path):
    source = tiny_vggt(seed=7)
    state = dict(source.state_dict())
    state["depth_head.projects.0.weight"] = torch.zeros(3)  # published heads we do not build
    path = tmp_path / "vggt_tiny.pt"
    torch.save(state, path)

    cfg = tiny_config()
    cfg.scene.vggt.weights = str(path)
    with recorded_reads() as log:
        model = build_model(cfg)  # loads model.scene.vggt.weights into scene_encoder.vggt
    loaded = model.scene_encoder.vggt.state_dict()
    assert not any(k.startswith("camera_head.") for k in loaded)
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())
    assert sorted(log.keys) == sorted(loaded)  # heads not built here (depth, camera) are never read

    del state["aggregator.frame_blocks.1.attn.qkv.weight"]
    state["aggregator.global_blocks.0.ls1.gamma"] = torch.zeros(5)
    torch.save(state, path)
    with pytest.raises(CineSceneError) as info:
        load_vggt_weights(VGGT(cfg.scene.vggt), str(path))
    message = str(info.value)
    assert "1 missing" in message.splitlines()[0] and "1 mis-shaped" in message.splitlines()[0]
    assert "aggregator.frame_blocks.1.attn.qkv.weight" in message
    assert "aggregator.global_blocks.0.ls1.gamma: [5] vs [32]" in message


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((480, 832), (294, 518)),
        ((64, 64), (56, 56)),
        ((1000, 500), (518, 518)),
        ((100, 1000), (56, 518)),
        ((10, 1000), (14, 518)),
    ],
)
def test_preprocessing_keeps_patch_multiples(hw, expected):
    size = 56 if hw == (64, 64) else 518
    images = torch.rand(1, 2, 3, *hw)
    out = preprocess_images(images, size, 14)
    assert tuple(out.shape[-2:]) == expected
    assert out.min() >= 0 and out.max() <= 1
    assert vggt_grid(*hw, size, 14) == (expected[0] // 14, expected[1] // 14)
