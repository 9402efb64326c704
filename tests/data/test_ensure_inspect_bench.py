"""ensure_dataset (first use, concurrent callers), `data inspect` and `bench loader`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from PIL import Image

from cinescene.config.data import DataConfig, SynthDataConfig
from cinescene.data.ensure import ensure_dataset
from cinescene.data.inspect import contact_sheet, summarize
from cinescene.errors import CineSceneError


def tiny_data_config(root) -> DataConfig:
    synth = SynthDataConfig(clips=3, frames=9, size=[32, 32], scene_images=3, seed=2)
    return DataConfig(train_shards=str(root / "shards"), generate=True, synth=synth, scene_images=3)


def test_ensure_generates_once_then_reuses(tmp_path):
    cfg = tiny_data_config(tmp_path)
    shards = ensure_dataset(cfg)
    assert (shards / "manifest.json").is_file() and (tmp_path / "shards_clips" / "clip_000002").is_dir()
    stamp = (shards / "manifest.json").stat().st_mtime_ns
    assert ensure_dataset(cfg) == shards and (shards / "manifest.json").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".shards.tmp*"))


def test_ensure_without_generate_is_a_clear_error(tmp_path):
    cfg = DataConfig(train_shards=str(tmp_path / "none"))
    with pytest.raises(CineSceneError, match="no training data"):
        ensure_dataset(cfg)


@pytest.mark.slow
def test_ensure_from_two_processes_at_once_generates_once(tmp_path):
    """Both callers wait on the lock (held here until both are waiting); exactly one generates."""
    from filelock import FileLock

    code = (
        "import sys; from pathlib import Path; from cinescene.log import setup_logging; "
        "from tests.data.test_ensure_inspect_bench import tiny_data_config; "
        "from cinescene.data.ensure import ensure_dataset; setup_logging('INFO'); "
        "print(ensure_dataset(tiny_data_config(Path(sys.argv[1]))))"
    )
    lock = FileLock(str(tmp_path / "shards") + ".lock")
    lock.acquire()
    logs = [tmp_path / f"log{i}.txt" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.DEVNULL, stderr=open(log, "w")
        )
        for log in logs
    ]
    deadline = time.time() + 240
    while not all(log.exists() and "waiting" in log.read_text() for log in logs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [
            log.read_text() for log in logs
        ]
        time.sleep(0.2)
    lock.release()
    assert all(p.wait(timeout=240) == 0 for p in procs), [log.read_text() for log in logs]
    text = "".join(log.read_text() for log in logs)
    assert text.count("synthetic dataset ready") == 1
    assert summarize(tmp_path / "shards")["num_samples"] == 3


def test_inspect_summary_and_contact_sheet(tiny_shards, tmp_path):
    summary = summarize(tiny_shards, verify=True)
    assert summary["num_samples"] == 6 and summary["num_shards"] == 3 and summary["damaged_shards"] == 0
    assert summary["encoder"] == {"name": "none"} and summary["fields"]["video_bg.npy"]["samples"] == 6
    png = contact_sheet(tiny_shards, tmp_path / "sheet.png", index=1)
    with Image.open(png) as image:
        assert image.width > 600 and image.height > 300
    with pytest.raises(CineSceneError, match="--sample 99"):
        contact_sheet(tiny_shards, tmp_path / "x.png", index=99)


@pytest.mark.slow
def test_inspect_verify_flags_a_damaged_shard(shards_copy, cinescene_cmd, cli_env):
    shard = sorted(shards_copy.glob("*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[5000] ^= 1
    shard.write_bytes(bytes(data))
    run = subprocess.run(
        cinescene_cmd + ["data", "inspect", str(shards_copy), "--verify", "--json"],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert run.returncode == 1
    rows = {s["name"]: s["status"] for s in json.loads(run.stdout)["shards"]}
    assert rows[shard.name] == "checksum mismatch" and list(rows.values()).count("ok") == 2


@pytest.mark.slow
def test_bench_loader_cli(tiny_shards, cinescene_cmd, cli_env, repo_root):
    run = subprocess.run(
        cinescene_cmd
        + [
            "bench",
            "loader",
            str(repo_root / "configs/experiments/smoke.yaml"),
            f"data.train_shards={tiny_shards}",
            "data.scene_images=3",
            "--workers",
            "0",
            "--batches",
            "3",
            "--step-time",
            "0.5",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["needed_samples_per_s"] == pytest.approx(2 / 0.5)
    assert result["rows"][0]["samples_per_s"] > 0
