"""Configs and inputs shared by the plan's tests."""

from __future__ import annotations

from pathlib import Path

import torch

from cinescene.config import load_config
from cinescene.models.flops import SampleShape

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs/experiments/cinescene_wan1.3b.yaml"
RECIPE_14B = REPO / "configs/experiments/cinescene_wan14b.yaml"
SMOKE = REPO / "configs/experiments/smoke.yaml"


def config(path: Path = SMOKE, *overrides: str):
    cfg, _ = load_config(path, list(overrides))
    return cfg


def model_inputs(cfg, micro_batch: int = 1) -> tuple[tuple, dict]:
    """Random (x, timestep, text) and keyword inputs at the config's sample shape."""
    shape = SampleShape.from_config(cfg)
    model, b = cfg.model, micro_batch
    x = torch.randn(b, model.in_dim, shape.latent_frames, shape.latent_height, shape.latent_width)
    text = torch.randn(b, model.text_len, model.text_dim)
    kwargs = {"cameras": torch.eye(4).expand(b, shape.latent_frames, 4, 4).contiguous()}
    if model.scene.enabled and model.scene.vggt_tokens:
        kwargs["scene_images"] = torch.rand(b, shape.scene_images, 3, shape.scene_height, shape.scene_width)
    return (x, torch.full((b,), 500.0), text), kwargs
