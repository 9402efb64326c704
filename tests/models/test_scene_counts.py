"""Samples with different numbers of scene images in one batch: padding changes nothing real."""

from __future__ import annotations

import pytest
import torch

from cinescene.models import build_model
from cinescene.models.cinescene_model import scene_count_list, token_validity
from cinescene.models.context_cache import ContextKVCache
from cinescene.sampling import sample

from .helpers import randomize, tiny_batch, tiny_config

COUNTS = [1, 3, 2]


def _model(**changes):
    model = build_model(tiny_config(**changes), load_weights=False).eval()
    randomize(model, seed=1)  # zero-initialised projector/heads would hide the context
    return model


def _inputs(batch, pixel, poses=False):
    extra = dict(cameras=batch["cameras"], scene_images=batch["scene_images"])
    if pixel:
        extra["scene_latents"] = batch["scene_latents"]
    if poses:
        extra["scene_cameras"] = batch["scene_cameras"]
    return extra


def _pad_garbage(batch, counts):
    """Fill every padding image / latent / camera with large noise: a correct model cannot tell."""
    out = dict(batch)
    for key in ("scene_images", "scene_latents", "scene_cameras"):
        t = batch[key].clone()
        for row, count in enumerate(counts):
            t[row, count:] = torch.randn_like(t[row, count:]) * 50
        out[key] = t
    return out


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(dict(), id="full"),
        pytest.param(dict(attention__mask="context_readonly"), id="readonly"),
        pytest.param(dict(scene__pixel_context=True), id="pixel", marks=pytest.mark.slow),
        pytest.param(
            dict(scene__pixel_context=True, scene__pose_embedding=True),
            id="pixel-anchored",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_each_sample_equals_itself_run_alone_with_only_its_real_images(changes):
    model = _model(**changes)
    pixel, poses = model.cfg.scene.pixel_context, model.cfg.scene.pose_embedding
    batch = _pad_garbage(tiny_batch(batch=3, seed=2), COUNTS)
    with torch.no_grad():
        together = model(
            batch["x"],
            batch["timestep"],
            batch["text"],
            scene_counts=torch.tensor(COUNTS),
            **_inputs(batch, pixel, poses),
        )
        for row, count in enumerate(COUNTS):
            alone = {k: v[row : row + 1] for k, v in batch.items()}
            for key in ("scene_images", "scene_latents", "scene_cameras"):
                alone[key] = alone[key][:, :count]
            want = model(alone["x"], alone["timestep"], alone["text"], **_inputs(alone, pixel, poses))
            assert (together[row : row + 1] - want).abs().max() < 1e-5, (row, count)


@pytest.mark.slow
def test_full_counts_are_the_unpadded_model_and_counts_matter():
    model = _model()
    batch = tiny_batch(batch=3, seed=4)
    with torch.no_grad():
        plain = model(batch["x"], batch["timestep"], batch["text"], **_inputs(batch, False))
        full = model(
            batch["x"],
            batch["timestep"],
            batch["text"],
            scene_counts=torch.tensor([3, 3, 3]),
            **_inputs(batch, False),
        )
        fewer = model(
            batch["x"],
            batch["timestep"],
            batch["text"],
            scene_counts=torch.tensor(COUNTS),
            **_inputs(batch, False),
        )
    assert torch.equal(plain, full)
    assert torch.equal(fewer[1], plain[1])  # count 3 of 3 (run in the same packed call)
    assert (fewer[0] - plain[0]).abs().max() > 1e-3  # one image of three: a different context


def test_gradients_with_scene_counts():
    model = _model(attention__mask="context_readonly")
    model.train()
    batch = tiny_batch(batch=3, seed=5)
    out = model(
        batch["x"],
        batch["timestep"],
        batch["text"],
        scene_counts=torch.tensor([0, 3, 1]),
        **_inputs(batch, False),
    )
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.scene_encoder.projector[1].weight.grad.abs().max() > 0


@pytest.mark.slow
def test_sampling_with_the_cache_respects_scene_counts():
    model = _model(attention__mask="context_readonly", scene__timestep="clean")
    batch = _pad_garbage(tiny_batch(batch=3, seed=6), COUNTS)
    counts = torch.tensor(COUNTS)
    kwargs = dict(steps=3, cameras=batch["cameras"], scene_images=batch["scene_images"], scene_counts=counts)
    plain = sample(model, batch["x"], batch["text"], context_cache=False, **kwargs)
    cached = sample(model, batch["x"], batch["text"], context_cache=True, **kwargs)
    assert (cached - plain).abs().max() < 1e-5 * max(1.0, float(plain.abs().max()))
    alone = sample(
        model,
        batch["x"][:1],
        batch["text"][:1],
        steps=3,
        cameras=batch["cameras"][:1],
        scene_images=batch["scene_images"][:1, :1],
        context_cache=True,
    )
    assert (cached[:1] - alone).abs().max() < 1e-4 * max(1.0, float(alone.abs().max()))


def test_cache_keeps_the_first_calls_packing():
    model = _model(attention__mask="context_readonly", scene__timestep="clean")
    batch = tiny_batch(batch=3, seed=7)
    cache = ContextKVCache()
    cache.forward(
        model,
        batch["x"],
        torch.full((3,), 400.0),
        batch["text"],
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
        scene_counts=torch.tensor(COUNTS),
    )
    assert cache.packing is not None and cache.packing.lengths == [320 + 64 * c for c in COUNTS]


def test_token_validity_follows_the_context_layout():
    # 4 video tokens, then VGGT tokens of 2 images (3 each), then pixel tokens of the same images (2 each)
    grids = [(1, 1, 3), (2, 1, 3), (1, 1, 2), (2, 1, 2)]
    valid = token_validity(4, 1, grids, [1, 0])
    assert valid.int().tolist() == [[1] * 4 + [1] * 3 + [0] * 3 + [1] * 2 + [0] * 2, [1] * 4 + [0] * 10]


@pytest.mark.parametrize(
    "counts,match",
    [
        ([1, 4, 0], r"\[0, 3\]"),
        ([1, -1, 2], r"\[0, 3\]"),
        ([1, 2], "3 integers"),
        ([1.0, 2.0, 3.0], "3 integers"),
    ],
)
def test_bad_scene_counts_are_named(counts, match):
    with pytest.raises(ValueError, match=match):
        scene_count_list(torch.tensor(counts), 3, 3)
    assert scene_count_list(torch.tensor([3, 3, 3]), 3, 3) is None
