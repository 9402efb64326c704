"""VGGT aggregator and camera head: the published key layout, tiny forward, weights, preprocessing."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from cinescene.config.model import VGGTConfig
from cinescene.errors import CineSceneError
from cinescene.models import build_model
from cinescene.models.vggt import VGGT, load_vggt_weights, preprocess_images, quaternion_to_matrix, vggt_grid

from .helpers import randomize, recorded_reads, tiny_config

# The released facebook/VGGT-1B checkpoint's tensor names and shapes: the state dict of the released
# architecture (facebookresearch/vggt, commit in the file), listed once; docs/MODEL.md says how it was made.
VGGT_1B_TENSORS = Path(__file__).with_name("vggt_1b_tensors.json")
# Heads of the released model this project does not build (depth, points, tracks): skipped when loading.
UNBUILT_HEADS = ("depth_head", "point_head", "track_head")


def released_vggt_1b() -> dict[str, tuple[int, ...]]:
    return {name: tuple(shape) for name, shape in json.loads(VGGT_1B_TENSORS.read_text())["tensors"].items()}


def test_released_vggt_1b_checkpoint_loads_strictly(tmp_path, caplog):
    """A checkpoint with every tensor of the released VGGT-1B (meta tensors: names and shapes, no data) loads
    strictly into the full-size model: every aggregator and camera-head key matched by name and shape, every
    parameter and buffer of ours filled, only the heads we do not build left out."""
    released = released_vggt_1b()
    assert len(released) == 1797 and sum(math.prod(s) for s in released.values()) == 1_256_537_516
    path = tmp_path / "model.pt"
    torch.save({name: torch.empty(shape, device="meta") for name, shape in released.items()}, path)
    for camera_head in (True, False):  # pose estimation (evaluation) / the scene encoder
        with torch.device("meta"):
            model = VGGT(VGGTConfig(), camera_head=camera_head)
        with caplog.at_level(logging.INFO, logger="cinescene"):
            report = load_vggt_weights(model, str(path))
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert report.ok and sorted(report.loaded) == sorted(ours)
        assert not report.missing and not report.unexpected and not report.mismatched and not report.fresh
        built = ("aggregator.", "camera_head.") if camera_head else ("aggregator.",)
        assert ours == {k: v for k, v in released.items() if k.startswith(built)}
        skipped = {k.split(".")[0] for k in released if not k.startswith(built)}
        assert skipped == set(UNBUILT_HEADS) | (set() if camera_head else {"camera_head"})
        assert f"not loading {', '.join(sorted(skipped))} (not built here)" in caplog.text
    print(f"VGGT-1B: {len(released)} tensors, {len(ours)} loaded by the scene encoder's VGGT")


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
