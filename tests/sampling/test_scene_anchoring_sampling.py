"""Sampling a model with scene anchoring (model.scene.pose_embedding): the scene images' cameras reach it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cinescene.config import load_config
from cinescene.data.geometry import look_at
from cinescene.errors import CineSceneError
from cinescene.models import build_model
from cinescene.models.camera import relative_camera_features
from cinescene.sampling import cameras
from cinescene.sampling.codec import PixelProxyCodec
from cinescene.sampling.pipeline import Settings, VideoGenerator
from cinescene.sampling.spec import DataSpec
from tests.fixtures.checkpoint import REPO

SPEC = DataSpec(
    encoder={"name": "none"},
    frames=17,
    size=(64, 64),
    scene_images=6,
    scene_size=(64, 64),
    pixel_pool=4,
    source="test",
)
SETTINGS = Settings(steps=2, guidance_scale=3.0, shift=15.0, seed=0)


def generator(pose_embedding: bool) -> VideoGenerator:
    cfg, _ = load_config(
        REPO / "configs/experiments/smoke.yaml", [f"model.scene.pose_embedding={pose_embedding}"]
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # zero-initialised modules would hide the inputs they read
        for name, param in model.named_parameters():
            if "pose_embedding" in name or name.startswith("head.head") or "cam_encoder" in name:
                param.normal_(0, 0.2)
    return VideoGenerator(model, SPEC, PixelProxyCodec(SPEC, cfg.model.text_dim, cfg.model.text_len), "cpu")


def world(seed: int) -> tuple:
    """A trajectory (5 latent frames) and 6 scene cameras around the origin."""
    rng = np.random.default_rng(seed)
    path = cameras.anchor_trajectory(
        cameras.preset("orbit_left", 5),
        look_at(rng.normal(size=3), rng.normal(size=3) + np.array([3.0, 0, 0])),
    )
    scene = np.stack([look_at(rng.normal(size=3) * 0.2, rng.normal(size=3) * 3) for _ in range(6)])
    return path, scene


def moved(poses: np.ndarray, seed: int) -> np.ndarray:
    """The same cameras in another world frame (one rigid motion applied to all)."""
    rng = np.random.default_rng(seed)
    g = look_at(rng.normal(size=3) * 5, rng.normal(size=3) * 5 + 1.0)
    return g @ poses


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(32, 64)).astype(np.float32)
    scene = rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    return text, scene


@pytest.mark.slow
def test_an_anchored_model_samples_with_the_scene_cameras(inputs):
    text, scene = inputs
    anchored = generator(True)
    path, scene_cameras = world(1)
    with pytest.raises(CineSceneError, match="pose_embedding.*one camera per scene image \\(6\\), got none"):
        anchored.latents(text, path, scene, SETTINGS, key="k")
    with pytest.raises(CineSceneError, match="got 2"):
        anchored.latents(text, path, scene, SETTINGS, key="k", scene_cameras=scene_cameras[:2])
    a = anchored.latents(text, path, scene, SETTINGS, key="k", scene_cameras=scene_cameras)
    other = anchored.latents(text, path, scene, SETTINGS, key="k", scene_cameras=world(2)[1])
    assert (a - other).abs().max() > 1e-3  # the cameras reach the model
    # Only poses relative to the trajectory's first camera count: the same scene in another world frame.
    same = anchored.latents(
        text, moved(path, 3), scene, SETTINGS, key="k", scene_cameras=moved(scene_cameras, 3)
    )
    assert torch.allclose(a, same, atol=1e-4)


@pytest.mark.slow
def test_a_model_without_anchoring_ignores_scene_cameras(inputs):
    text, scene = inputs
    plain = generator(False)
    path, scene_cameras = world(1)
    assert torch.equal(
        plain.latents(text, path, scene, SETTINGS, key="k"),
        plain.latents(text, path, scene, SETTINGS, key="k", scene_cameras=scene_cameras),
    )


def test_anchoring_a_trajectory_moves_it_rigidly(tmp_path):
    path = cameras.preset("dolly_in", 5)
    first = look_at(np.array([1.0, 2.0, 0.5]), np.array([4.0, 0.0, 1.0]))
    anchored = cameras.anchor_trajectory(path, first)
    assert np.allclose(anchored[0], first)
    assert torch.allclose(
        relative_camera_features(torch.as_tensor(anchored)[None]),
        relative_camera_features(torch.as_tensor(path)[None]),
        atol=1e-6,
    )

    file = tmp_path / "scene.json"
    file.write_text(json.dumps({"c2w": np.repeat(np.eye(4)[None], 3, 0)[:, :3].tolist()}))
    assert cameras.load_scene_cameras(file, 3).shape == (3, 4, 4)
    with pytest.raises(CineSceneError, match="3 cameras for 2 scene images"):
        cameras.load_scene_cameras(file, 2)
    scaled = np.diag([2.0, 2.0, 2.0, 1.0])  # a valid bottom row, but the 3x3 part scales
    file.write_text(json.dumps({"c2w": scaled[None].tolist()}))
    with pytest.raises(CineSceneError, match="not a rotation"):
        cameras.load_scene_cameras(file, 1)
