"""Scenes anchored to the camera (``model.scene.pose_embedding``): each scene image's pose relative to the
target's first frame, embedded into that image's context tokens."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cinescene.config.train import TrainConfig
from cinescene.models import build_model, load_pretrained
from cinescene.models.camera import rigid_inverse, scene_pose_features
from cinescene.models.flops import SampleShape, flops_per_sample, parameter_counts
from cinescene.sampling import sample
from cinescene.train.objective import FlowMatchingObjective

from .helpers import randomize, tiny_batch, tiny_config

COUNTS = torch.tensor([2, 3])


def _inputs(batch, **extra):
    inputs = dict(
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
        scene_latents=batch["scene_latents"],
        scene_cameras=batch["scene_cameras"],
    )
    inputs.update(extra)
    return inputs


def _anchored(seed=1, **changes):
    """The tiny model with VGGT and pixel context, anchored, every weight random (pose embedding included)."""
    model = build_model(
        tiny_config(scene__pixel_context=True, scene__pose_embedding=True, **changes), load_weights=False
    )
    randomize(model, seed=seed)
    return model


def block_inputs(model, batch, **extra):
    """The token sequence [video ++ context] the first block receives."""
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            model(batch["x"], batch["timestep"], batch["text"], **_inputs(batch, **extra))
    finally:
        handle.remove()
    return seen[0]


def test_scene_poses_are_relative_to_the_first_target_frame():
    batch = tiny_batch(batch=2, seed=3)
    poses = scene_pose_features(batch["cameras"], batch["scene_cameras"])
    expected = rigid_inverse(batch["cameras"][:, :1].double()) @ batch["scene_cameras"].double()
    assert poses.shape == (2, 3, 12)
    assert torch.allclose(poses.double(), expected[..., :3, :4].flatten(2), atol=1e-6)
    # Moving the whole world (trajectory and scene) changes nothing: only the relative placement counts.
    world = torch.linalg.matrix_exp(
        torch.tensor([[0.0, -0.3, 0.2, 0], [0.3, 0, -0.1, 0], [-0.2, 0.1, 0, 0], [0, 0, 0, 0]])
    )
    world[:3, 3] = torch.tensor([5.0, -2.0, 1.0])
    moved = scene_pose_features(world @ batch["cameras"], world @ batch["scene_cameras"])
    assert torch.allclose(moved, poses, atol=1e-5)


@pytest.mark.slow
def test_zero_initialised_embedding_leaves_the_model_bit_identical(tmp_path):
    """A checkpoint of the model without anchoring loads
    strictly; the new key starts at zero, the output is equal."""
    plain = build_model(tiny_config(scene__pixel_context=True), load_weights=False)
    randomize(plain, seed=2)
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, tmp_path / "plain.safetensors")
    anchored = build_model(
        tiny_config(scene__pixel_context=True, scene__pose_embedding=True), load_weights=False
    )
    report = load_pretrained(anchored, tmp_path / "plain.safetensors")
    assert report.fresh == ["scene_encoder.pose_embedding.bias", "scene_encoder.pose_embedding.weight"]
    batch = tiny_batch(batch=2, seed=4)
    with torch.no_grad():
        for counts in (None, COUNTS):
            want = plain(batch["x"], batch["timestep"], batch["text"], scene_counts=counts, **_inputs(batch))
            got = anchored(
                batch["x"], batch["timestep"], batch["text"], scene_counts=counts, **_inputs(batch)
            )
            assert want.abs().max() > 0.1
            assert torch.equal(got, want)


def test_the_embedding_changes_only_the_real_context_tokens():
    model = _anchored()
    batch = tiny_batch(batch=2, seed=5)
    drop = torch.tensor([False, True])
    anchored = block_inputs(model, batch, scene_counts=COUNTS, drop_scene=drop)
    with torch.no_grad():
        model.scene_encoder.pose_embedding.weight.zero_()
        model.scene_encoder.pose_embedding.bias.zero_()
    unanchored = block_inputs(model, batch, scene_counts=COUNTS, drop_scene=drop)
    video, per_image = 5 * 8 * 8, 8 * 8  # VGGT tokens of 3 images, then pixel tokens of 3
    changed = (anchored != unanchored).any(-1)  # (B, L): which tokens' inputs differ
    assert not changed[:, :video].any()  # video tokens untouched
    assert not changed[1].any()  # a dropped scene is the null token either way
    for part in range(2):  # VGGT part, pixel part
        for image in range(3):
            start = video + (part * 3 + image) * per_image
            tokens = changed[0, start : start + per_image]
            # Sample 0 holds 2 real images: each real image's tokens all move, the padding image's none.
            assert tokens.all() if image < COUNTS[0] else not tokens.any(), (part, image)


def test_shuffling_images_and_cameras_together_permutes_the_context_tokens():
    """Images, latents and cameras shuffled together give the same context tokens, shuffled the same way.

    The whole model is not order-invariant by design: context image s gets RoPE frame index F + s, and
    VGGT's first image defines its world frame (hence training shuffles the images). So the check is on the
    tokens entering the blocks, with VGGT's features taken per image as given (``scene_tokens``)."""
    model = _anchored()
    batch = tiny_batch(batch=2, seed=6)
    features = model.scene_encoder.extract_features(batch["scene_images"])
    order = torch.tensor([2, 0, 1])
    shuffled = dict(
        batch, scene_latents=batch["scene_latents"][:, order], scene_cameras=batch["scene_cameras"][:, order]
    )
    plain = block_inputs(model, batch, scene_images=None, scene_tokens=features)
    permuted = block_inputs(model, shuffled, scene_images=None, scene_tokens=features[:, order])
    video, per_image = 5 * 8 * 8, 8 * 8

    def images(tokens):  # (B, 2 parts, 3 images, tokens per image, dim)
        return tokens[:, video:].reshape(2, 2, 3, per_image, -1)

    assert torch.equal(permuted[:, :video], plain[:, :video])
    assert torch.allclose(images(permuted), images(plain)[:, :, order], atol=1e-6)
    # The pairing matters: cameras shuffled without their images give other tokens.
    mismatched = block_inputs(
        model,
        dict(batch, scene_cameras=batch["scene_cameras"][:, order]),
        scene_images=None,
        scene_tokens=features,
    )
    assert (images(mismatched) - images(plain)).abs().max() > 1e-3


def test_a_training_step_reaches_the_embedding():
    """Through the objective (batch -> model inputs): the pose
    embedding, zero at first, gets a gradient and moves."""
    model = build_model(tiny_config(scene__pose_embedding=True), load_weights=False)
    randomize(model, seed=7, skip=("pose_embedding",))  # a trained-looking DiT, a fresh embedding
    model.apply_trainable()
    embedding = model.scene_encoder.pose_embedding
    assert not embedding.weight.any()
    objective = FlowMatchingObjective(TrainConfig(text_dropout=0.0), model.cfg)
    inputs = tiny_batch(batch=2, seed=8)
    batch = dict(
        video=inputs["x"],
        text=inputs["text"],
        cameras=inputs["cameras"],
        scene_images=inputs["scene_images"],
        scene_cameras=inputs["scene_cameras"],
        scene_counts=COUNTS,
        key=["a", "b"],
    )
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    loss, _ = objective(model, batch, generators, torch.device("cpu"))
    loss.backward()
    assert embedding.weight.grad.abs().max() > 0 and embedding.bias.grad.abs().max() > 0
    optimizer = torch.optim.AdamW([embedding.weight, embedding.bias], lr=1e-3)
    optimizer.step()
    assert embedding.weight.abs().max() > 0
    with pytest.raises(KeyError, match="scene_cameras"):
        objective(
            model, {k: v for k, v in batch.items() if k != "scene_cameras"}, generators, torch.device("cpu")
        )


@pytest.mark.slow
def test_the_context_cache_stays_exact_with_anchoring():
    model = _anchored(attention__mask="context_readonly", scene__timestep="clean").eval()
    batch = tiny_batch(batch=2, seed=9)
    kwargs = dict(
        steps=3,
        cameras=batch["cameras"],
        scene_images=batch["scene_images"],
        scene_latents=batch["scene_latents"],
        scene_counts=COUNTS,
    )
    plain = sample(
        model, batch["x"], batch["text"], context_cache=False, scene_cameras=batch["scene_cameras"], **kwargs
    )
    cached = sample(
        model, batch["x"], batch["text"], context_cache=True, scene_cameras=batch["scene_cameras"], **kwargs
    )
    assert (cached - plain).abs().max() < 1e-5 * max(1.0, float(plain.abs().max()))
    other = sample(
        model,
        batch["x"],
        batch["text"],
        context_cache=True,
        scene_cameras=batch["scene_cameras"][:, [1, 0, 2]],
        **kwargs,
    )
    assert (other - cached).abs().max() > 1e-4  # the cached context carries the poses
    with pytest.raises(ValueError, match="scene_cameras"):
        sample(model, batch["x"], batch["text"], context_cache=True, **kwargs)


def test_counts_and_flops_include_the_embedding():
    cfg = tiny_config()
    plain, anchored = (
        build_model(tiny_config(scene__pose_embedding=on), device="meta") for on in (False, True)
    )
    extra = parameter_counts(anchored)["new_modules"] - parameter_counts(plain)["new_modules"]
    assert extra == 12 * cfg.dim + cfg.dim
    shape = SampleShape(
        latent_frames=5,
        latent_height=16,
        latent_width=16,
        scene_images=6,
        scene_height=64,
        scene_width=64,
        scene_latent_height=16,
        scene_latent_width=16,
    )
    flops = [
        flops_per_sample(tiny_config(scene__pose_embedding=on), shape).dit_forward for on in (False, True)
    ]
    assert flops[1] - flops[0] == 2 * 6 * 12 * cfg.dim
