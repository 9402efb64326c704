"""MFU's FLOPs per sample follow the scene images the model really attends."""

from __future__ import annotations

import copy

import torch

from cinescene.config import load_config
from cinescene.models import build_model
from cinescene.models.flops import SampleShape, flops_per_sample
from cinescene.train.components import _sample_facts
from tests.models.helpers import REPO


def _batch(scene_images):
    return {"video": torch.zeros(2, 3, 5, 16, 16), "scene_images": torch.zeros(2, scene_images, 3, 64, 64)}


def test_variable_scene_counts_give_the_expected_flops_over_the_draw():
    cfg, _ = load_config(REPO / "configs/experiments/smoke.yaml")
    model = build_model(cfg.model, device="meta")
    fixed = _sample_facts(cfg, model, _batch(3))
    varied_cfg = copy.deepcopy(cfg)
    varied_cfg.data.scene_images_min = 1
    varied = _sample_facts(varied_cfg, model, _batch(3))

    def flops(count):
        shape = SampleShape(
            latent_frames=5,
            latent_height=16,
            latent_width=16,
            scene_images=count,
            scene_height=64,
            scene_width=64,
            scene_latent_height=16,
            scene_latent_width=16,
        )
        return float(flops_per_sample(cfg.model, shape).training)

    assert fixed.flops_per_sample == flops(3)
    assert abs(varied.flops_per_sample - (flops(1) + flops(2) + flops(3)) / 3) < 1e-6 * flops(3)
    assert varied.tokens_per_sample == 320 + 2 * 64  # the mean of 1, 2, 3 images of 64 tokens
