"""VGGT's first image is special (its own camera and register tokens: it defines the world frame).

Training shuffles a sample's scene images in the loader, before anything encodes them, so over training
every stored image of a sample reaches the first slot; sampling and evaluation use one stated, fixed
order: a shard sample's stored order, a scene folder's file names sorted (docs/DATA.md).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from PIL import Image

from cinescene.config.model import ModelConfig
from cinescene.config.train import TrainConfig
from cinescene.data.loader import build_train_loader
from cinescene.data.manifest import load_manifest
from cinescene.models import build_model
from cinescene.models.vggt import preprocess_images
from cinescene.sampling.inputs import ShardSamples, load_scene_folder
from cinescene.sampling.spec import DataSpec
from cinescene.train.objective import FlowMatchingObjective
from tests.models.helpers import tiny_config

from .conftest import DIMS, SCENE_IMAGES, data_config

EPOCHS = 12


def stored_images(shards) -> dict[str, torch.Tensor]:
    """Every sample's scene images in stored order, as the loader scales them: key -> (S, 3, H, W)."""
    plain = build_train_loader(
        data_config(shards, shuffle_scene_images=False, shuffle="none"),
        DIMS,
        rank=0,
        world_size=1,
        seed=0,
        micro_batch_size=1,
    )
    count = load_manifest(shards).num_samples
    return {batch["key"][0]: batch["scene_images"][0] for batch, _ in zip(plain, range(count))}


def test_every_stored_image_reaches_the_first_slot_over_training(tiny_shards):
    stored = stored_images(tiny_shards)
    # Two of the three stored images per sample: the pick is a subset too, and still any image can lead.
    kept = SCENE_IMAGES - 1
    loader = build_train_loader(
        data_config(tiny_shards, scene_images=kept),
        DIMS,
        rank=0,
        world_size=1,
        seed=0,
        micro_batch_size=len(stored),
    )
    first = defaultdict(set)
    for batch, _ in zip(loader, range(EPOCHS)):  # one batch = one epoch of the six samples
        for b, key in enumerate(batch["key"]):
            images = batch["scene_images"][b]
            assert images.shape[0] == kept
            first[key] |= {t for t in range(SCENE_IMAGES) if torch.equal(images[0], stored[key][t])}
    assert set(first) == set(stored)
    assert all(slots == set(range(SCENE_IMAGES)) for slots in first.values()), dict(first)


def test_training_encodes_the_images_in_the_loaders_order(tiny_shards):
    """The objective hands the batch's (shuffled) images to the model, whose VGGT encodes them then: no
    step reuses features of another order."""
    cfg = tiny_config()
    model = build_model(cfg)
    seen = []
    model.scene_encoder.vggt.aggregator.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    loader = build_train_loader(
        data_config(tiny_shards), cfg, rank=0, world_size=1, seed=0, micro_batch_size=2
    )
    objective = FlowMatchingObjective(TrainConfig(), cfg)
    for batch, _ in zip(loader, range(2)):
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        objective(model, batch, generators, torch.device("cpu"))
        vggt = cfg.scene.vggt
        assert torch.equal(seen[-1], preprocess_images(batch["scene_images"], vggt.img_size, vggt.patch_size))


def test_sampling_and_eval_read_a_shard_samples_images_in_stored_order(tiny_shards):
    """`cinescene sample --scene SHARDS:KEY`, `cinescene eval` and the eval hook read samples through
    ShardSamples: the stored order, whatever the run's data.shuffle_scene_images."""
    stored = stored_images(tiny_shards)
    manifest = load_manifest(tiny_shards)
    cfg = ModelConfig(in_dim=3, out_dim=3, text_dim=DIMS.text_dim, text_len=DIMS.text_len)
    spec = DataSpec.from_manifest(manifest, SCENE_IMAGES, 4)
    samples = ShardSamples(tiny_shards, spec, cfg)
    for index in range(len(samples)):
        for _ in range(2):  # the same every time
            sample = samples.read(index)
            key = manifest.samples()[index].key
            expected = (stored[key].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            np.testing.assert_array_equal(sample.scene, expected)


def test_a_scene_folder_is_read_in_file_name_order(tmp_path, tiny_shards):
    spec = DataSpec.from_manifest(load_manifest(tiny_shards), SCENE_IMAGES, 4)
    height, width = spec.scene_size
    colours = {"b_second.png": 120, "c_third.png": 240, "a_first.png": 10}  # written out of order
    for name, value in colours.items():
        Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(tmp_path / name)
    images, names = load_scene_folder(tmp_path, spec)
    assert names == sorted(colours)
    assert [int(image[0, 0, 0]) for image in images] == [10, 120, 240]
