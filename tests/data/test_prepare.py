"""`data prepare`: shards + manifest, determinism, resume, rank splits, errors."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
import webdataset as wds

from cinescene.config import ConfigError
from cinescene.data.clips import read_clip
from cinescene.data.manifest import load_manifest
from cinescene.data.prepare import merge, prepare, resolve_rank
from cinescene.data.shards import ShardReader
from cinescene.errors import CineSceneError

from .conftest import FRAMES, SIZE


def test_manifest_describes_the_shards(tiny_shards, tiny_clips):
    manifest = load_manifest(tiny_shards)
    data = manifest.data
    assert data["num_samples"] == 6 and data["num_shards"] == 3 and data["encoder"] == {"name": "none"}
    assert data["frames"] == FRAMES and data["latent_frames"] == 3 and data["size"] == list(SIZE)
    assert data["fields"]["video.npy"] == {"shape": [FRAMES, *SIZE, 3], "dtype": "uint8", "count": 6}
    assert data["fields"]["cameras.npy"]["shape"] == [3, 4, 4]
    for shard in data["shards"]:
        assert shard["bytes"] <= 0.16 * 2**20 and len(shard["sha256"]) == 64
        assert shard["num_samples"] == len(shard["samples"]) == 2
    # Cameras are kept per latent frame: source frames 0, 4, 8.
    clip = read_clip(tiny_clips / "clip_000000")
    sample = next(iter(wds.WebDataset(str(tiny_shards / data["shards"][0]["name"]), shardshuffle=False)))
    cameras = np.load(io.BytesIO(sample["cameras.npy"]))
    assert np.allclose(cameras, clip.c2w[[0, 4, 8]], atol=1e-6)


def test_shards_are_plain_webdataset(tiny_shards):
    """webdataset's own streaming reader sees every sample and field the loader's indexed reads see."""
    names = sorted(str(p) for p in tiny_shards.glob("*.tar"))
    streamed = list(wds.WebDataset(names, shardshuffle=False))
    assert [s["__key__"] for s in streamed] == [f"clip_{i:06d}" for i in range(6)]
    reader = ShardReader()
    for sample, ref in zip(streamed, load_manifest(tiny_shards).samples()):
        indexed = reader.read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)
        assert {k: v for k, v in sample.items() if not k.startswith("__")} == indexed


def test_prepare_is_deterministic(tiny_clips, tiny_shards, tmp_path):
    again = tmp_path / "again"
    prepare(tiny_clips, again, encoder="none", rank=0, world=1, shard_size_mb=0.16, show_progress=False)
    for name in ["manifest.json"] + [s.name for s in tiny_shards.glob("*.tar")]:
        assert (again / name).read_bytes() == (tiny_shards / name).read_bytes(), name


def test_resume_skips_finished_shards_and_redoes_damaged_ones(tiny_clips, tiny_shards, tmp_path):
    out = tmp_path / "resume"
    prepare(tiny_clips, out, encoder="none", rank=0, world=1, shard_size_mb=0.16, show_progress=False)
    first, second = out / "shard-r00000-000000.tar", out / "shard-r00000-000001.tar"
    kept = first.stat().st_mtime_ns
    second.write_bytes(second.read_bytes()[:1000])  # a crash left it half-written
    (out / "shard-r00000-000002.tar").unlink()
    (out / "manifest.json").unlink()
    prepare(tiny_clips, out, encoder="none", rank=0, world=1, shard_size_mb=0.16, show_progress=False)
    assert first.stat().st_mtime_ns == kept  # untouched
    for name in ("manifest.json", "shard-r00000-000001.tar", "shard-r00000-000002.tar"):
        assert (out / name).read_bytes() == (tiny_shards / name).read_bytes(), name


def test_ranks_split_clips_and_the_last_one_merges(tiny_clips, tmp_path):
    out = tmp_path / "ranks"
    assert prepare(tiny_clips, out, encoder="none", rank=1, world=2, show_progress=False) is None
    assert not (out / "manifest.json").exists()
    assert (
        prepare(tiny_clips, out, encoder="none", rank=0, world=2, show_progress=False)
        == out / "manifest.json"
    )
    manifest = load_manifest(out)
    keys = sorted(s[0] for shard in manifest.data["shards"] for s in shard["samples"])
    assert keys == [f"clip_{i:06d}" for i in range(6)] and manifest.data["num_shards"] == 2
    (out / "manifest.json").unlink()
    assert merge(out) == out / "manifest.json"
    assert load_manifest(out).num_samples == 6


def test_rank_comes_from_the_slurm_array(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert resolve_rank(None, None) == (3, 4)
    assert resolve_rank(0, 1) == (0, 1)
    with pytest.raises(ConfigError, match="--rank"):
        resolve_rank(5, 4)


def test_resize_and_frames_options(tiny_clips, tmp_path):
    out = tmp_path / "small"
    prepare(tiny_clips, out, encoder="none", frames=5, size=(24, 32), show_progress=False)
    data = load_manifest(out).data
    assert data["fields"]["video.npy"]["shape"] == [5, 24, 32, 3] and data["latent_frames"] == 2
    sample = next(iter(wds.WebDataset(str(next(out.glob("*.tar"))), shardshuffle=False)))
    K = np.load(io.BytesIO(sample["intrinsics.npy"]))[0]
    source = read_clip(tiny_clips / "clip_000000").K[0]
    # 32x32 -> rows 4..28 cropped: focal length unchanged, principal point at the new centre.
    assert np.allclose(K[:2, 2], [16.0, 12.0]) and np.isclose(K[0, 0], source[0, 0])


def test_errors(tiny_clips, tmp_path):
    with pytest.raises(CineSceneError, match="missing does not exist"):
        prepare(tmp_path / "missing", tmp_path / "o", show_progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CineSceneError, match="no clips"):
        prepare(tmp_path / "empty", tmp_path / "o", show_progress=False)
    with pytest.raises(ConfigError, match="--frames"):
        prepare(tiny_clips, tmp_path / "o", frames=8, show_progress=False)
    with pytest.raises(CineSceneError, match="--frames asks for 13"):
        prepare(tiny_clips, tmp_path / "o13", frames=13, show_progress=False)
    prepare(tiny_clips, tmp_path / "o2", show_progress=False)
    with pytest.raises(CineSceneError, match="other settings"):
        prepare(tiny_clips, tmp_path / "o2", shard_size_mb=1, show_progress=False)


@pytest.mark.slow
def test_cli_prepare_and_inspect(tiny_clips, tmp_path, cinescene_cmd, cli_env):
    out = tmp_path / "cli"
    run = subprocess.run(
        cinescene_cmd + ["data", "prepare", "--src", str(tiny_clips), "--out", str(out), "--encoder", "none"],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert run.returncode == 0, run.stderr
    run = subprocess.run(
        cinescene_cmd + ["data", "inspect", str(out), "--json"], capture_output=True, text=True, env=cli_env
    )
    assert run.returncode == 0 and json.loads(run.stdout)["num_samples"] == 6
    run = subprocess.run(
        cinescene_cmd
        + ["data", "prepare", "--src", str(tmp_path / "nope"), "--out", str(out), "--encoder", "none"],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("cinescene data: error:")
