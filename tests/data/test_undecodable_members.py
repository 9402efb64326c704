"""Shard members whose CRC is right but whose content is not the array the manifest describes (an empty
member, a zip, an array of another shape or dtype): skipped, counted and logged with shard and key by the
loader at any worker count, and listed by `data inspect --verify`."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest

from cinescene.data.loader import SKIPPED_SAMPLES, build_eval_loader
from cinescene.data.manifest import MANIFEST, load_manifest
from cinescene.data.shards import ShardReader, ShardWriter, npy_bytes

from .conftest import DIMS, data_config
from .test_loader import global_keys, loader

BAD_SHARD = "shard-z-bad.tar"  # sorts last: manifest indices 6.. are the bad samples


def _first_sample_fields(shards):
    ref = load_manifest(shards).samples()[0]
    return ShardReader().read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)


def bad_members(fields):
    """Sample key -> its fields with one member broken in one way."""
    video = np.load(io.BytesIO(fields["video.npy"]))
    intrinsics = np.load(io.BytesIO(fields["intrinsics.npy"]))
    return {
        "bad_empty": dict(fields, **{"scene.npy": b""}),  # EOFError in np.load
        "bad_zip": dict(fields, **{"cameras.npy": b"PK\x03\x04" + b"\0" * 60}),  # BadZipFile
        "bad_shape": dict(fields, **{"video.npy": npy_bytes(video[:5])}),  # ValueError in collate
        "bad_dtype": dict(fields, **{"intrinsics.npy": npy_bytes(intrinsics.astype(np.float64))}),
        "bad_cut": dict(
            fields, **{"scene_cameras.npy": fields["scene_cameras.npy"][:-8]}
        ),  # data shorter than header
    }


def add_bad_shard(shards):
    """A fifth shard whose samples have right CRCs (written by the real writer) but broken members."""
    samples = bad_members(_first_sample_fields(shards))
    writer = ShardWriter(shards / BAD_SHARD)
    for key, fields in samples.items():
        writer.write(key, fields)
    record = writer.close()
    manifest = json.loads((shards / MANIFEST).read_text())
    manifest["shards"].append(record)
    manifest["num_shards"] += 1
    manifest["num_samples"] += len(samples)
    for desc in manifest["fields"].values():
        desc["count"] += len(samples)
    (shards / MANIFEST).write_text(json.dumps(manifest))
    return sorted(samples)


def test_each_broken_member_is_skipped_counted_and_logged_with_shard_and_key(shards_copy, caplog):
    bad = add_bad_shard(shards_copy)
    ld = loader(shards_copy, micro=1, shuffle="none")
    with caplog.at_level(logging.WARNING, logger="cinescene"):
        keys = global_keys([ld], 11)  # one epoch: 6 good and 5 bad positions
    assert len(keys) == 11 and not set(bad) & set(keys)
    assert ld.stats["skipped"] == 5 and ld.stats["skipped_by_shard"][BAD_SHARD] == 5
    messages = [r.getMessage() for r in caplog.records]
    for key in bad:
        assert any(f"skipping sample {key} in shard {BAD_SHARD}" in m for m in messages), (key, messages)
    shape_line = next(m for m in messages if "bad_shape" in m)
    assert "video.npy is uint8 (5, 32, 32, 3), the manifest says uint8 (9, 32, 32, 3)" in shape_line
    assert any("bad_dtype" in m and "intrinsics.npy is float64" in m for m in messages)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_skip_count_is_exact_at_any_worker_count(shards_copy, workers):
    add_bad_shard(shards_copy)
    batches = list(islice(loader(shards_copy, micro=1, num_workers=workers), 22))  # two epochs
    counts = [b[SKIPPED_SAMPLES] for b in batches]
    assert sum(counts[:11]) == 5 and sum(counts) == 10
    assert all(b["video"].shape == batches[0]["video"].shape for b in batches)


def test_the_eval_loader_drops_them(shards_copy):
    add_bad_shard(shards_copy)
    ld = build_eval_loader(
        data_config(shards_copy), DIMS, rank=0, world_size=1, micro_batch_size=4, shards=str(shards_copy)
    )
    assert sum(len(b["key"]) for b in ld) == 6 and ld.stats["skipped"] == 5


@pytest.mark.slow
def test_data_inspect_verify_reports_them(shards_copy, repo_root):
    bad = add_bad_shard(shards_copy)

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "cinescene", "data", "inspect", str(shards_copy), *a],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = run("--verify")
    assert out.returncode == 1 and out.stderr == "", out.stderr
    assert "unreadable samples: 5 of 11" in out.stdout
    for key in bad:
        assert f"  {BAD_SHARD}: {key}: " in out.stdout
    report = json.loads(run("--verify", "--json").stdout)
    assert sorted(s["key"] for s in report["unreadable_samples"]) == bad
    assert {s["shard"] for s in report["unreadable_samples"]} == {BAD_SHARD}
    assert run().returncode == 0  # without --verify: the cheap summary, no sample read
