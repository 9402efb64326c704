"""The training loader: the batch contract, exact resume across world sizes, corrupt data."""

from __future__ import annotations

import logging
from itertools import islice

import numpy as np
import pytest
import torch

from cinescene.data.loader import build_eval_loader, build_train_loader
from cinescene.data.manifest import load_manifest
from cinescene.data.order import epoch_order
from cinescene.data.proxy import hashed_text
from cinescene.errors import CineSceneError

from .conftest import DIMS, FRAMES, SCENE_IMAGES, SIZE, data_config


def loader(shards, rank=0, world=1, micro=2, start=0, seed=0, **cfg):
    return build_train_loader(
        data_config(shards, **cfg),
        DIMS,
        rank=rank,
        world_size=world,
        seed=seed,
        micro_batch_size=micro,
        start_sample=start,
    )


def global_keys(loaders, steps, field="key"):
    """Run ``steps`` micro-batch steps on every simulated rank; return the batches' ``field`` (a list or a
    batch-first tensor) in global position order."""
    iters = [iter(ld) for ld in loaders]
    world = len(loaders)
    out = []
    for _ in range(steps):
        per_rank = [next(it)[field] for it in iters]
        per_rank = [v.tolist() if torch.is_tensor(v) else v for v in per_rank]
        micro = len(per_rank[0])
        for i in range(micro):  # global position within the step = i * world + rank
            for rank in range(world):
                out.append(per_rank[rank][i])
    return out


def test_batch_contract(tiny_shards):
    batch = next(iter(loader(tiny_shards, micro=2)))
    latent_frames, h, w = 1 + (FRAMES - 1) // 4, SIZE[0] // 4, SIZE[1] // 4
    shapes = {
        "video": (2, 3, latent_frames, h, w),
        "text": (2, DIMS.text_len, DIMS.text_dim),
        "scene_images": (2, SCENE_IMAGES, 3, *SIZE),
        "scene_latents": (2, SCENE_IMAGES, 3, h, w),
        "cameras": (2, latent_frames, 4, 4),
        "intrinsics": (2, latent_frames, 3, 3),
        "scene_cameras": (2, SCENE_IMAGES, 4, 4),
    }
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == shape, key
        assert batch[key].dtype == torch.float32, key
    assert set(batch) == set(shapes) | {"prompt", "key", "skipped_samples", "scene_counts"}
    assert batch["scene_counts"].dtype == torch.int64 and batch["scene_counts"].tolist() == [SCENE_IMAGES] * 2
    assert batch["skipped_samples"] == 0
    assert len(batch["prompt"]) == len(batch["key"]) == 2
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1
    assert batch["scene_images"].min() >= 0 and batch["scene_images"].max() <= 1
    # The pixel proxy is the average-pooled frames 0, 4, 8; the text the hashed words, zero-padded.
    prompt = batch["prompt"][0]
    assert torch.equal(batch["text"][0], torch.from_numpy(hashed_text(prompt, DIMS.text_dim, DIMS.text_len)))
    assert (batch["text"][0, len(prompt.split()) :] == 0).all() or len(prompt.split()) >= DIMS.text_len


def test_scene_images_are_permuted_per_sample_with_their_cameras(tiny_shards):
    shuffled = next(iter(loader(tiny_shards, micro=6)))
    plain = next(iter(loader(tiny_shards, micro=6, shuffle_scene_images=False)))
    assert shuffled["key"] == plain["key"]
    moved = 0
    for b in range(6):
        for s in range(SCENE_IMAGES):  # each shuffled image is some plain image, with the same camera
            match = [
                t
                for t in range(SCENE_IMAGES)
                if torch.equal(shuffled["scene_images"][b, s], plain["scene_images"][b, t])
            ]
            assert len(match) == 1
            assert torch.equal(shuffled["scene_cameras"][b, s], plain["scene_cameras"][b, match[0]])
            moved += match[0] != s
    assert moved > 0


def test_every_sample_once_per_epoch_and_epochs_differ(tiny_shards):
    keys = global_keys([loader(tiny_shards, micro=3)], 4)
    assert sorted(keys[:6]) == sorted(keys[6:]) == [f"clip_{i:06d}" for i in range(6)]
    assert keys[:6] != keys[6:]


@pytest.mark.parametrize("shuffle", ["global", "block"])
def test_resume_at_another_world_size_continues_the_same_global_order(tiny_shards, shuffle):
    """2 ranks for k steps, then 1 rank from their cursor == 1 rank throughout (same keys, same order)."""
    k = 2
    reference = global_keys([loader(tiny_shards, micro=2, shuffle=shuffle, shuffle_buffer=3)], 2 * k + 3)
    two = [loader(tiny_shards, rank=r, world=2, micro=1, shuffle=shuffle, shuffle_buffer=3) for r in range(2)]
    first = global_keys(two, 2 * k)
    state = two[0].state_dict()
    assert state["consumed_samples"] == two[1].state_dict()["consumed_samples"] == 4 * k
    one = loader(tiny_shards, micro=2, shuffle=shuffle, shuffle_buffer=3)
    one.load_state_dict(state)
    rest = global_keys([one], 3)
    assert first + rest == reference
    assert one.state_dict()["consumed_samples"] == 4 * k + 6


def test_same_position_gets_the_same_scene_permutation_at_any_world_size(tiny_shards):
    one = next(iter(loader(tiny_shards, micro=2)))
    two = [next(iter(loader(tiny_shards, rank=r, world=2, micro=1))) for r in range(2)]
    for position in range(2):
        rank_batch = two[position % 2]
        assert rank_batch["key"][0] == one["key"][position]
        assert torch.equal(rank_batch["scene_cameras"][0], one["scene_cameras"][position])


def test_worker_processes_give_the_same_sequence(tiny_shards):
    plain = [b["key"] for b in islice(loader(tiny_shards, micro=1), 7)]
    workers = [b["key"] for b in islice(loader(tiny_shards, micro=1, num_workers=2), 7)]
    assert plain == workers


def test_order_is_a_pure_function_of_seed_and_epoch():
    sizes = [5, 7, 3]
    assert np.array_equal(epoch_order(sizes, 1, 0), epoch_order(sizes, 1, 0))
    assert not np.array_equal(epoch_order(sizes, 1, 0), epoch_order(sizes, 2, 0))
    assert not np.array_equal(epoch_order(sizes, 1, 0), epoch_order(sizes, 1, 1))
    for mode in ("global", "block", "none"):
        assert sorted(epoch_order(sizes, 1, 3, mode, block=4)) == list(range(15))
    # Pinned values: the order must not change between versions (old checkpoints resume the same data).
    assert epoch_order([4, 4], 0, 0).tolist() == PINNED_ORDER


PINNED_ORDER = [5, 7, 4, 2, 3, 0, 6, 1]


def _shard_with(manifest, key):
    for shard in manifest.data["shards"]:
        for entry in shard["samples"]:
            if entry[0] == key:
                return manifest.root / shard["name"], entry
    raise KeyError(key)


def corrupt_one_member(shards, key):
    path, (_, offset, length, _) = _shard_with(load_manifest(shards), key)
    data = bytearray(path.read_bytes())
    data[offset + length // 2] ^= 0xFF  # flip bits inside one member
    path.write_bytes(bytes(data))
    return path


def test_corrupt_member_is_skipped_counted_and_logged(shards_copy, caplog):
    path = corrupt_one_member(shards_copy, "clip_000003")
    ld = loader(shards_copy, micro=3)
    with caplog.at_level(logging.WARNING, logger="cinescene"):
        keys = global_keys([ld], 2)
    assert "clip_000003" not in keys and len(keys) == 6
    assert ld.stats["skipped"] == 1 and ld.stats["skipped_by_shard"][path.name] == 1
    assert any(path.name in r.getMessage() and "clip_000003" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("workers", [0, 2])
def test_each_batch_carries_its_exact_skip_count_at_any_worker_count(shards_copy, workers):
    """Two bad samples at adjacent positions: the worker at the first meets both (the second while looking
    for a substitute), the other worker meets the second again; still each counts once per epoch."""
    orders = [epoch_order([2, 2, 2], 0, epoch).tolist() for epoch in (0, 1)]
    bad = {orders[0][2], orders[0][3]}
    for index in bad:
        corrupt_one_member(shards_copy, f"clip_{index:06d}")
    ld = loader(shards_copy, micro=1, num_workers=workers)
    batches = list(islice(ld, 12))  # two epochs, one position per batch
    counts = [b["skipped_samples"] for b in batches]
    assert counts == [int(orders[step // 6][step % 6] in bad) for step in range(12)]
    assert sum(counts[:6]) == 2 and ld.stats["skipped"] == 4  # each bad sample once per epoch
    assert not bad & {int(k[-6:]) for b in batches for k in b["key"]}


def test_truncated_shard_is_skipped_and_the_rest_still_loads(shards_copy, caplog):
    manifest = load_manifest(shards_copy)
    path, _ = _shard_with(manifest, "clip_000002")
    path.write_bytes(path.read_bytes()[:2000])
    with caplog.at_level(logging.WARNING, logger="cinescene"):
        ld = loader(shards_copy, micro=2)
        first_epoch = global_keys([ld], 3)
        assert ld.stats["skipped"] == 2
        keys = first_epoch + global_keys([ld], 3)
    assert not {"clip_000002", "clip_000003"} & set(keys)
    assert set(keys) == {"clip_000000", "clip_000001", "clip_000004", "clip_000005"}
    assert ld.stats["skipped"] == 4 and ld.stats["skipped_by_shard"][path.name] == 4  # 2 samples x 2 epochs
    assert any("truncated" in r.getMessage() and path.name in r.getMessage() for r in caplog.records)


def test_substitution_is_the_same_at_any_world_size(shards_copy):
    manifest = load_manifest(shards_copy)
    path, _ = _shard_with(manifest, "clip_000001")
    path.unlink()
    one = global_keys([loader(shards_copy, micro=2)], 4)
    two = global_keys([loader(shards_copy, rank=r, world=2, micro=1) for r in range(2)], 4)
    assert one == two


def test_nothing_readable_is_a_clear_error(shards_copy):
    for shard in shards_copy.glob("*.tar"):
        shard.write_bytes(b"\0" * shard.stat().st_size)  # right size, wrong bytes: fails only when read
    for workers in (0, 2):  # a worker's error too: the message alone, not the worker's traceback
        with pytest.raises(CineSceneError, match="^no readable sample left in .*: all 6 failed") as info:
            next(iter(loader(shards_copy, num_workers=workers)))
        assert "\n" not in str(info.value) and "CineSceneError" not in str(info.value)
    for shard in shards_copy.glob("*.tar"):
        shard.unlink()
    with pytest.raises(CineSceneError, match="none of the 3 shards in .* exists"):
        loader(shards_copy)


def test_configuration_mismatches_are_one_line_errors(tiny_shards, tmp_path):
    with pytest.raises(CineSceneError, match="scene_images=9"):
        loader(tiny_shards, scene_images=9)
    with pytest.raises(CineSceneError, match="pixel_pool=3"):
        loader(tiny_shards, pixel_pool=3)
    with pytest.raises(CineSceneError, match="model.in_dim=16"):
        build_train_loader(
            data_config(tiny_shards),
            dict(text_dim=8, text_len=4, channels=16),
            rank=0,
            world_size=1,
            seed=0,
            micro_batch_size=1,
        )
    with pytest.raises(CineSceneError, match="no manifest.json"):
        loader(tmp_path)


def test_eval_loader_covers_every_sample_once_across_ranks(tiny_shards):
    cfg = data_config(tiny_shards)
    keys = []
    for rank in range(2):
        ev = build_eval_loader(
            cfg, DIMS, shards=cfg.train_shards, rank=rank, world_size=2, micro_batch_size=2
        )
        batches = list(ev)
        assert len(batches) == len(ev) == 2
        keys += [k for b in batches for k in b["key"]]
    assert sorted(keys) == [f"clip_{i:06d}" for i in range(6)]


def test_eval_loader_length_and_skip_count_leave_out_bad_samples(shards_copy):
    path = corrupt_one_member(shards_copy, "clip_000002")
    cfg = data_config(shards_copy)
    # clips 0, 2, 4
    ev = build_eval_loader(cfg, DIMS, shards=cfg.train_shards, rank=0, world_size=2, micro_batch_size=2)
    assert len(ev) == 1 and ev.stats["skipped"] == 1 and ev.stats["skipped_by_shard"][path.name] == 1
    for _ in range(2):  # a second pass neither finds nor counts it again
        batches = list(ev)
        assert [b["key"] for b in batches] == [["clip_000000", "clip_000004"]] and len(ev) == len(batches)
    assert ev.stats["skipped"] == 1
    fresh = build_eval_loader(cfg, DIMS, shards=cfg.train_shards, rank=0, world_size=2, micro_batch_size=1)
    assert len(list(fresh)) == len(fresh) == 2 and fresh.stats["skipped"] == 1  # iterating first counts too
