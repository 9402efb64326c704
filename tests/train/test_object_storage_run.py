"""The smoke job trained from shards on object storage (a real S3 server on loopback), killed and resumed.

The smoke clips are prepared twice with the same settings, into a local directory and into the bucket
(`cinescene data prepare --out s3://...`), and the same shard is deleted from both. A run on the local
copy is the reference; the run on the bucket is killed (SIGKILL, launcher and ranks) after its first
checkpoint and started again. It resumes from that checkpoint and ends with the reference's weights and
the same count of skipped samples, and nothing it wrote holds the S3 secret.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from cinescene.ckpt import weights_digest
from cinescene.config import load_config
from cinescene.data.ensure import synth_clips_dir
from cinescene.data.manifest import load_manifest

from .conftest import REPO, finish, start

pytestmark = [pytest.mark.slow, pytest.mark.dist]

STEPS, EVERY = 8, 4


def prepare(clips: Path, out: str, log: Path) -> None:
    argv = [sys.executable, "-m", "cinescene", "data", "prepare", "--src", str(clips), "--out", out]
    assert finish(start([*argv, "--encoder", "none", "--shard-size-mb", "1"], log)) == 0, log.read_text()[
        -3000:
    ]


def train(run_dir: Path, shards: str, log: Path):
    return start(
        [
            sys.executable,
            "-m",
            "cinescene",
            "train",
            "configs/experiments/smoke.yaml",
            f"run.dir={run_dir}",
            f"data.train_shards={shards}",
            "data.generate=false",
            f"train.max_steps={STEPS}",
            f"checkpoint.every_steps={EVERY}",
            "tracking.wandb.mode=offline",
        ],
        log,
    )


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_training_from_s3_killed_and_resumed_ends_bit_exact_with_a_deleted_object_skipped(
    s3, smoke_shards, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # prepare's staging
    cfg, _ = load_config(REPO / "configs/experiments/smoke.yaml", [f"data.train_shards={smoke_shards}"])
    clips, log = REPO / synth_clips_dir(cfg.data), tmp_path / "run.log"  # what smoke_shards rendered
    local, bucket = tmp_path / "shards", f"{s3.url}/smoke/shards"
    prepare(clips, str(local), log)
    prepare(clips, bucket, log)
    manifest = load_manifest(bucket)
    assert manifest.data == load_manifest(local).data and manifest.data["num_shards"] > 2
    deleted = manifest.data["shards"][1]["name"]
    (local / deleted).unlink()
    s3.fs().rm_file(f"{bucket.removeprefix('s3://')}/{deleted}")

    reference = tmp_path / "reference"
    assert finish(train(reference, str(local), log)) == 0, log.read_text()[-3000:]

    run = tmp_path / "s3"
    proc = train(run, bucket, log)
    deadline = time.monotonic() + 600
    while not (rows(run) and rows(run)[-1]["step"] >= EVERY + 2):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the run on s3 shards did not get past its first checkpoint"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # launcher and ranks, no chance to save
    proc.wait()
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{EVERY:08d}"
    assert finish(train(run, bucket, log)) == 0, log.read_text()[-3000:]

    text = log.read_text()
    assert f"resumed from {run}/checkpoints/step_{EVERY:08d}" in text and "Traceback" not in text
    assert f"{deleted} (missing)" in text  # the damaged object is named when the loader starts
    assert [r["step"] for r in rows(run)] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(reference)]
    assert rows(run)[-1]["data/skipped"] == rows(reference)[-1]["data/skipped"] > 0
    final = f"checkpoints/step_{STEPS:08d}"
    assert weights_digest(run / final) == weights_digest(reference / final)
    secret = s3.server.secret_key.encode()
    assert not [p for p in run.rglob("*") if p.is_file() and secret in p.read_bytes()]
