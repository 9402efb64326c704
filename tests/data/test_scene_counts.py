"""Samples with a variable number of scene images (data.scene_images_min): counts, padding, determinism."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch

from cinescene.config import ConfigError, load_config
from cinescene.data.loader import build_eval_loader
from cinescene.data.manifest import load_manifest
from cinescene.data.order import scene_count, scene_permutation
from cinescene.data.shards import ShardReader, npy_field

from .conftest import DIMS, SCENE_IMAGES, data_config
from .test_loader import global_keys, loader

PER_IMAGE = ("scene_images", "scene_latents", "scene_cameras")
EPOCHS = 6  # 36 positions of the 6-sample fixture: enough to see every count in [1, 3]


def batches(shards, count=EPOCHS, **cfg):
    """The first ``count`` single-rank batches of one epoch each (positions 6k .. 6k + 5)."""
    return list(islice(loader(shards, micro=6, **cfg), count))


def test_scene_count_is_uniform_deterministic_and_pinned():
    draws = [scene_count(3, p, 2, 5) for p in range(400)]
    assert draws == [scene_count(3, p, 2, 5) for p in range(400)]
    assert set(draws) == {2, 3, 4, 5}
    assert all(70 <= draws.count(v) <= 130 for v in range(2, 6))  # 100 expected each
    assert draws != [scene_count(4, p, 2, 5) for p in range(400)]  # the seed matters
    assert [scene_count(7, p, 7, 7) for p in range(5)] == [7] * 5
    # Pinned: resuming an old checkpoint must see the same counts after an upgrade.
    assert [scene_count(0, p, 1, 3) for p in range(12)] == PINNED_COUNTS
    with pytest.raises(ValueError, match="low=4, high=3"):
        scene_count(0, 0, 4, 3)


PINNED_COUNTS = [3, 2, 2, 3, 2, 2, 2, 3, 3, 2, 2, 1]


def test_default_uses_every_image_and_matches_the_shuffled_stored_images(tiny_shards):
    """Key unset: counts are S and the arrays are the stored images in the sample's permutation."""
    batch = batches(tiny_shards, 1)[0]
    assert batch["scene_counts"].tolist() == [SCENE_IMAGES] * 6
    explicit_full = batches(tiny_shards, 1, scene_images_min=SCENE_IMAGES)[0]
    manifest = load_manifest(tiny_shards)
    refs = {ref.key: ref for ref in manifest.samples()}
    for position, key in enumerate(batch["key"]):
        ref = refs[key]
        fields = ShardReader().read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)
        scene = npy_field(fields, "scene.npy")
        pick = scene_permutation(0, position, len(scene))[:SCENE_IMAGES]
        expected = np.moveaxis(scene[pick], -1, 1).astype(np.float32) / 255.0
        assert torch.equal(batch["scene_images"][position], torch.from_numpy(expected))
        assert torch.equal(
            batch["scene_cameras"][position],
            torch.from_numpy(npy_field(fields, "scene_cameras.npy")[pick].astype(np.float32)),
        )
    for name in PER_IMAGE + ("video", "text", "cameras", "scene_counts"):
        assert torch.equal(batch[name], explicit_full[name]), name


def test_variable_counts_pad_with_zeros_and_keep_the_first_of_the_same_permutation(tiny_shards):
    varied = batches(tiny_shards, scene_images_min=1)
    full = batches(tiny_shards)
    counts = []
    for epoch, (v, f) in enumerate(zip(varied, full)):
        assert v["key"] == f["key"]
        assert v["scene_counts"].dtype == torch.int64 and v["scene_counts"].shape == (6,)
        for b, count in enumerate(v["scene_counts"].tolist()):
            assert count == scene_count(0, epoch * 6 + b, 1, SCENE_IMAGES)
            counts.append(count)
            for name in PER_IMAGE:
                assert v[name].shape == f[name].shape, name  # fixed length S: batches still stack
                assert torch.equal(v[name][b, :count], f[name][b, :count]), name
                assert (v[name][b, count:] == 0).all(), name
                assert v[name][b, :count].abs().sum() > 0, name  # real images, not padding
        for name in ("video", "text", "cameras", "intrinsics"):
            assert torch.equal(v[name], f[name]), name
    assert set(counts) == set(range(1, SCENE_IMAGES + 1))  # within [1, S], every value seen


def test_counts_are_the_same_for_two_loaders_and_after_resume_at_another_world_size(tiny_shards):
    reference = global_keys([loader(tiny_shards, micro=2, scene_images_min=1)], 7, field="scene_counts")
    assert reference == global_keys(
        [loader(tiny_shards, micro=2, scene_images_min=1)], 7, field="scene_counts"
    )
    assert len(set(reference)) > 1
    two = [loader(tiny_shards, rank=r, world=2, micro=1, scene_images_min=1) for r in range(2)]
    first = global_keys(two, 4, field="scene_counts")
    one = loader(tiny_shards, micro=2, scene_images_min=1)
    one.load_state_dict(two[0].state_dict())
    assert first + global_keys([one], 3, field="scene_counts") == reference  # 8 + 6 positions


def test_evaluation_always_uses_every_scene_image(tiny_shards):
    cfg = data_config(tiny_shards, scene_images_min=1)
    plain = data_config(tiny_shards)
    varied = list(
        build_eval_loader(cfg, DIMS, shards=cfg.train_shards, rank=0, world_size=1, micro_batch_size=3)
    )
    full = list(
        build_eval_loader(plain, DIMS, shards=plain.train_shards, rank=0, world_size=1, micro_batch_size=3)
    )
    assert [b["scene_counts"].tolist() for b in varied] == [[SCENE_IMAGES] * 3] * 2
    for v, f in zip(varied, full):
        for name in PER_IMAGE:
            assert torch.equal(v[name], f[name]), name


@pytest.mark.parametrize("value", ["0", "7", "-1"])
def test_out_of_range_minimum_is_a_config_error_naming_the_key(repo_root, value):
    smoke = repo_root / "configs/experiments/smoke.yaml"  # data.scene_images = 6
    with pytest.raises(ConfigError) as info:
        load_config(smoke, [f"data.scene_images_min={value}"])
    assert info.value.key == "data.scene_images_min"
    assert f"expected a value in [1, 6], got {value}" in str(info.value) and "\n" not in str(info.value)
    cfg, _ = load_config(smoke, ["data.scene_images_min=6"])
    assert cfg.data.scene_images_min == 6 and load_config(smoke)[0].data.scene_images_min is None
