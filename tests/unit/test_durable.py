"""Durability (issue 20, item 10): what a command keeps is fsynced, file and directory, before it is done."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cinescene import durable


@pytest.fixture
def synced(monkeypatch) -> list[Path]:
    """Every path os.fsync is called on, in order."""
    seen: list[Path] = []
    real = os.fsync

    def fsync(fd):
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_an_atomic_write_syncs_the_file_before_its_rename_and_the_directory_after(tmp_path, synced):
    target = tmp_path / "record.json"
    target.write_text("old\n")
    durable.write_json_atomic(target, {"a": 1}, mode=0o600)
    assert json.loads(target.read_text()) == {"a": 1} and (target.stat().st_mode & 0o777) == 0o600
    assert synced[-1] == tmp_path  # the rename is durable
    assert any(p.name.startswith(durable.TMP_PREFIX) for p in synced[:-1])  # the bytes, before the rename
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    target.write_text("old\n")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        durable.write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_appended_job_ids_are_synced(tmp_path, synced):
    from cinescene.slurm.records import record_job, recorded_jobs

    record_job(tmp_path, "12")
    record_job(tmp_path, "13_4")
    assert recorded_jobs(tmp_path) == ["12", "13_4"] and synced == [tmp_path / "slurm" / "jobs"] * 2


def test_a_slurm_start_record_is_synced(tmp_path, synced):
    from cinescene.slurm.records import write_record

    path = tmp_path / "slurm" / "7.start-0.json"
    write_record(path, {"job": "7"})
    assert synced[-1] == path.parent and json.loads(path.read_text()) == {"job": "7"}


def test_data_manifests_are_synced_with_their_directory(tiny_data_clips, tmp_path, synced):
    from cinescene.data.prepare import prepare

    out = tmp_path / "shards"
    prepare(tiny_data_clips, out, encoder="none", rank=0, world=1, show_progress=False)
    names = [p.name for p in synced]
    last_dir_sync = len(names) - 1 - names[::-1].index("shards")
    assert last_dir_sync > max(i for i, n in enumerate(names) if n.startswith(".tmp-manifest.json"))
    assert any(n.startswith(".tmp-manifest.rank00000-of-00001.json") for n in names)
    assert all(p.parent == out or p == out for p in synced)


@pytest.fixture
def tiny_data_clips(tmp_path):
    from cinescene.data.synth import synthesize

    return synthesize(tmp_path / "clips", 2, 5, (32, 32), 2, show_progress=False)


def test_a_slurm_start_record_is_masked_whole(tmp_path, monkeypatch, synced, repo_root):
    from cinescene.config import load_config
    from cinescene.slurm.job import write_start_record

    secret = "hf_0123456789abcdefghij"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_JOB_COMMENT", f"token {secret}")
    cfg, _ = load_config(repo_root / "configs/experiments/smoke.yaml", [f"tracking.wandb.notes={secret}"])
    path = tmp_path / "slurm" / "7.start-0.json"
    write_start_record(path, ["srun", "cinescene", "train", f"tracking.wandb.notes={secret}"], ["node"], cfg)
    text = path.read_text()
    assert secret not in text and text.count("***") >= 3  # command line, config, environment
    assert synced[-1] == path.parent
