"""Full sizes build on the meta device in seconds with the reference's parameter counts."""

from __future__ import annotations

import time

import pytest

from cinescene.config import load_config
from cinescene.models import build_model
from cinescene.models.flops import parameter_counts

from .helpers import REPO


@pytest.mark.parametrize("name, expected", [("wan1.3b", 1_418_996_800), ("wan14b", 14_288_491_584)])
def test_base_dit_parameter_count(name, expected):
    cfg, _ = load_config(REPO / f"configs/model/{name}.yaml", ["data.train_shards=unused"])
    start = time.perf_counter()
    model = build_model(cfg.model, device="meta")
    seconds = time.perf_counter() - start
    counts = parameter_counts(model)
    print(
        f"{name}: dit {counts['dit']:,} scene encoder {counts['scene_encoder']:,} "
        f"new {counts['new_modules']:,} built in {seconds:.2f}s"
    )
    assert counts["dit"] == expected
    assert all(p.is_meta for p in model.parameters())
    assert seconds < 30
    # Camera modules per block (ReCamMaster): Linear(12, dim) + Linear(dim, dim);
    # scene projector + null token.
    d, layers, c2 = cfg.model.dim, cfg.model.num_layers, 2 * cfg.model.scene.vggt.embed_dim
    camera = layers * ((12 * d + d) + (d * d + d))
    scene = 2 * c2 + (c2 * d + d) + (d * d + d) + d
    assert counts["new_modules"] == camera + scene


def test_vggt_1b_aggregator_size():
    """facebook/VGGT-1B's aggregator: DINOv2 ViT-L/14 + 24 frame + 24 global blocks."""
    cfg, _ = load_config(REPO / "configs/model/wan1.3b.yaml", ["data.train_shards=unused"])
    counts = parameter_counts(build_model(cfg.model, device="meta"))
    assert counts["scene_encoder"] == 909_112_320
