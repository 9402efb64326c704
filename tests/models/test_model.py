"""CineSceneModel on CPU at tiny size: init equivalence, scene context, camera, masks, checkpointing."""

from __future__ import annotations

import logging

import pytest
import torch

from cinescene.models import build_model
from cinescene.models.camera import relative_camera_features
from cinescene.models.weights import assign_state_dict, is_cinescene_extension

from .helpers import randomize, tiny_batch, tiny_config


def run(model, batch, **extra):
    args = dict(cameras=batch["cameras"], scene_images=batch["scene_images"])
    args.update(extra)
    return model(batch["x"], batch["timestep"], batch["text"], **args)


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    randomize(model, seed=1)
    return model


def test_new_modules_at_init_leave_the_base_dit_unchanged():
    base = build_model(tiny_config(scene__enabled=False, camera__enabled=False))
    randomize(base, seed=3)
    full = build_model(tiny_config())  # camera encoders zero, projectors identity, scene encoder fresh
    report = assign_state_dict(full, base.state_dict(), optional=is_cinescene_extension)
    assert report.fresh and all(is_cinescene_extension(k) for k in report.fresh)
    batch = tiny_batch()
    with torch.no_grad():
        expected = base(batch["x"], batch["timestep"], batch["text"])
        got = full(batch["x"], batch["timestep"], batch["text"], cameras=batch["cameras"])
    diff = (got - expected).abs().max().item()
    print(f"new modules at init, no scene context: max abs diff vs base DiT = {diff:.1e}")
    assert expected.abs().max() > 0.1  # a real output, not the zero-initialised head's
    assert diff == 0.0


@pytest.mark.parametrize("mask", ["full", "context_readonly"])
def test_forward_backward_with_scene_and_camera(mask):
    model = build_model(tiny_config(attention__mask=mask))
    randomize(model, seed=2)
    model.apply_trainable()
    batch = tiny_batch()
    out = run(model, batch, drop_scene=torch.tensor([True, False]))  # the null token gets a gradient too
    assert out.shape == batch["x"].shape and out.dtype == torch.float32
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith("scene_encoder.vggt."):
            assert not p.requires_grad and p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    camera_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if "cam_encoder" in n]
    assert all(g > 0 for g in camera_grads)


def test_mask_and_context_timestep_change_the_result(random_model):
    batch = tiny_batch()
    with torch.no_grad():
        full = run(random_model, batch)
        random_model.cfg.attention.mask = "context_readonly"
        readonly = run(random_model, batch)
        random_model.cfg.attention.mask = "full"
        random_model.cfg.scene.timestep = "shared"
        shared = run(random_model, batch)
        random_model.cfg.scene.timestep = "clean"
    assert not torch.allclose(full, readonly, atol=1e-4)
    assert not torch.allclose(full, shared, atol=1e-4)


@pytest.mark.slow
def test_scene_and_camera_inputs_matter(random_model):
    batch = tiny_batch()
    with torch.no_grad():
        out = run(random_model, batch)
        other_scene = run(random_model, batch, scene_images=torch.rand_like(batch["scene_images"]))
        other_path = run(random_model, batch, cameras=tiny_batch(seed=9)["cameras"])
        no_scene = random_model(batch["x"], batch["timestep"], batch["text"], cameras=batch["cameras"])
    for changed in (other_scene, other_path, no_scene):
        assert not torch.allclose(out, changed, atol=1e-4)


def test_samples_are_independent(random_model):
    batch = tiny_batch(batch=2)
    with torch.no_grad():
        both = run(random_model, batch)
        first = run(random_model, {k: v[:1] for k, v in batch.items()})
    assert torch.allclose(both[:1], first, atol=1e-5)


def test_drop_scene_replaces_the_context_per_sample(random_model):
    batch = tiny_batch()
    drop = torch.tensor([True, False])
    with torch.no_grad():
        out = run(random_model, batch, drop_scene=drop)
        out_other = run(
            random_model, batch, drop_scene=drop, scene_images=torch.rand_like(batch["scene_images"])
        )
        kept = run(random_model, batch)
    assert torch.allclose(out[0], out_other[0])  # dropped: scene images do not matter
    assert not torch.allclose(out[1], out_other[1], atol=1e-4)
    assert torch.allclose(out[1], kept[1], atol=1e-5)  # kept sample as without dropping
    assert not torch.allclose(out[0], kept[0], atol=1e-4)


def test_precomputed_scene_tokens_equal_images(random_model):
    batch = tiny_batch()
    with torch.no_grad():
        features = random_model.scene_encoder.extract_features(batch["scene_images"])
        assert features.shape == (2, 3, 4, 4, 64)  # 56 px / 14 -> 4x4, 2 * embed_dim 32
        from_images = run(random_model, batch)
        from_tokens = run(random_model, batch, scene_images=None, scene_tokens=features)
    assert torch.allclose(from_images, from_tokens, atol=1e-6)


@pytest.mark.slow
def test_pixel_context_adds_tokens_through_the_patch_embedding():
    model = build_model(tiny_config(scene__pixel_context=True))
    randomize(model, seed=4)
    batch = tiny_batch()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        out = run(model, batch, scene_latents=batch["scene_latents"])
        other = run(model, batch, scene_latents=torch.randn_like(batch["scene_latents"]))
    assert seen[0] == 320 + 3 * 64 + 3 * 64  # video + VGGT + pixel tokens
    assert not torch.allclose(out, other, atol=1e-4)
    with pytest.raises(ValueError, match="scene_latents"):
        run(model, batch)
    only_pixels = build_model(tiny_config(scene__pixel_context=True, scene__vggt_tokens=False))
    assert not hasattr(only_pixels.scene_encoder, "vggt")
    assert (
        only_pixels(batch["x"], batch["timestep"], batch["text"], scene_latents=batch["scene_latents"]).shape
        == batch["x"].shape
    )


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_gradients():
    batch = tiny_batch()
    grads, block_calls = [], []
    for checkpointing in (False, True):
        model = build_model(tiny_config(activation_checkpointing=checkpointing))
        randomize(model, seed=5)
        model.apply_trainable()
        calls = []
        model.blocks[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        run(model, batch).square().mean().backward()
        block_calls.append(len(calls))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert block_calls == [1, 2]  # with checkpointing the block is recomputed in backward
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    worst = max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])
    print(f"activation checkpointing: max abs gradient diff = {worst:.1e}")
    assert worst < 1e-6


def test_trainable_patterns():
    cfg = tiny_config(trainable=["blocks.*.cam_encoder.*", "scene_encoder.projector.*"], frozen=[])
    model = build_model(cfg)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".cam_encoder." in n or n.startswith("scene_encoder.projector.") for n in names)
    counts = model.apply_trainable(tiny_config())  # defaults: everything but VGGT
    assert counts["frozen"] == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("scene_encoder.vggt.")
    )
    assert len(model.trainable_parameters()) == sum(
        1 for n, _ in model.named_parameters() if not n.startswith("scene_encoder.vggt.")
    )


def test_patterns_that_match_nothing_are_logged(caplog):
    logger = logging.getLogger("cinescene.models")
    logger.addHandler(caplog.handler)  # the cinescene tree may not propagate to the root logger
    try:
        with caplog.at_level(logging.DEBUG, logger="cinescene.models"):
            build_model(tiny_config(scene__enabled=False, trainable=["blocks.*", "blocks.*.typo"]))
    finally:
        logger.removeHandler(caplog.handler)
    unmatched = {
        (r.levelname, r.getMessage()) for r in caplog.records if "matches no parameter" in r.getMessage()
    }
    assert unmatched == {
        ("WARNING", "model.trainable pattern 'blocks.*.typo' matches no parameter"),
        ("DEBUG", "model.frozen pattern 'scene_encoder.vggt.*' matches no parameter"),
    }


def test_relative_cameras_ignore_the_world_frame():
    cams = tiny_batch()["cameras"]
    feats = relative_camera_features(cams)
    assert feats.shape == (2, 5, 12)
    identity = torch.eye(4)[:3].reshape(12)
    assert torch.allclose(feats[:, 0], identity.expand(2, 12), atol=1e-6)
    world = torch.eye(4)
    world[:3, :3] = torch.linalg.matrix_exp(
        torch.tensor([[0.0, -0.3, 0.2], [0.3, 0.0, -0.1], [-0.2, 0.1, 0.0]])
    )
    world[:3, 3] = torch.tensor([4.0, -2.0, 1.0])
    assert torch.allclose(relative_camera_features(world @ cams), feats, atol=1e-5)


def test_bad_inputs_are_named():
    model = build_model(tiny_config())
    batch = tiny_batch()
    with pytest.raises(ValueError, match="one per latent frame"):
        run(model, batch, cameras=batch["cameras"][:, :3])
    with pytest.raises(ValueError, match="scene_images or scene_tokens"):
        run(model, batch, scene_images=None, scene_latents=batch["scene_latents"])


def test_short_text_is_zero_padded_to_text_len(random_model):
    """Wan pads umT5 embeddings with zeros to text_len and attends over all of them; so does the model."""
    batch = tiny_batch()
    prompt = batch["text"][:, :9]  # 9 of text_len=32 tokens
    padded = torch.cat([prompt, prompt.new_zeros(2, 32 - 9, prompt.shape[2])], dim=1)
    assert random_model.embed_text(prompt).shape == (2, 32, 64)
    with torch.no_grad():
        short = run(random_model, batch | {"text": prompt})
        full = run(random_model, batch | {"text": padded})
        random_model.text_len = 9  # attend over the 9 prompt tokens only
        try:
            unpadded = run(random_model, batch | {"text": prompt})
        finally:
            random_model.text_len = 32
    assert torch.equal(short, full)
    assert not torch.allclose(short, unpadded, atol=1e-4)  # the padding rows do change the result


def test_text_longer_than_text_len_or_of_the_wrong_width_is_refused(random_model):
    batch = tiny_batch()
    with pytest.raises(ValueError, match="33 tokens, more than model.text_len=32"):
        run(random_model, batch | {"text": torch.zeros(2, 33, 64)})
    with pytest.raises(ValueError, match=r"must be \(B, L, text_dim=64\)"):
        run(random_model, batch | {"text": torch.zeros(2, 32, 48)})


@pytest.mark.slow
def test_bf16_parameters_run_with_fp32_inputs():
    """DeepSpeed bf16 keeps parameters in bf16 and feeds the loader's fp32 tensors."""
    model = build_model(tiny_config(scene__pixel_context=True))
    randomize(model, seed=6)
    batch = tiny_batch()
    with torch.no_grad():
        expected = run(model, batch, scene_latents=batch["scene_latents"])
    model.to(torch.bfloat16)
    out = run(model, batch, scene_latents=batch["scene_latents"])
    out.square().mean().backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - expected).abs().max() < 0.05 * expected.abs().max()
