"""Checkpoint manager: atomic step directories, `latest`,
recovery after a killed save, retention, resume rules.

A one-rank fake engine writes DeepSpeed's ZeRO-3 file layout through the checkpoint engine the manager
installs (:mod:`tests.ckpt.fakes`); crash points raise instead of SIGKILLing, which leaves the same files
behind as a killed process (the real SIGKILL is in test_train_integration.py).
"""

from __future__ import annotations

import json

import pytest

from cinescene.ckpt.layout import is_complete, step_dir_name
from cinescene.ckpt.manifest import hash_file, read_manifest
from cinescene.ckpt.rank_state import read_rank_state
from cinescene.ckpt.record import read_record
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.errors import CineSceneError
from cinescene.train.checkpoint import CheckpointManager, check_compatible, validate
from cinescene.train.checkpoint import (
    manager as manager_module,
)
from tests.ckpt.fakes import FakeZeroEngine, rank_state, record

POINTS = ["tmp_created", "after_shards", "after_rank_states", "before_rename", "after_rename", "after_latest"]


class Crash(Exception):
    pass


def manager(root, **cfg) -> CheckpointManager:
    return CheckpointManager(root, CheckpointConfig(**cfg), rank=0, world_size=1)


def save(mgr: CheckpointManager, step: int):
    return mgr.save(FakeZeroEngine(step=step), record(step), rank_state(step), "run: {}\n")


def test_save_writes_a_complete_directory_with_its_manifest_and_moves_latest(tmp_path):
    mgr = manager(tmp_path / "ck")
    first = save(mgr, 1)
    second = save(mgr, 2)
    assert first.name == "step_00000001" and is_complete(first) and is_complete(second)
    assert (tmp_path / "ck" / "latest").read_text() == "step_00000002\n"
    assert mgr.latest() == second
    state = json.loads((second / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["consumed_samples"] == 8 and state["format"] == 2
    assert read_record(second).step == 2 and validate(second).consumed_samples == 8
    assert read_rank_state(second / "rank_states" / "rank_00000.safetensors")["callbacks"] == {
        "guard": {"total": 2}
    }
    assert not list((tmp_path / "ck").glob(".tmp-*")) and not list(second.glob("*.py"))
    # Every file is in the manifest, with the size and SHA-256 computed while it was written.
    listed = read_manifest(second)
    on_disk = sorted(
        str(p.relative_to(second)) for p in second.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert sorted(listed) == on_disk
    assert all(hash_file(second / name) == rec for name, rec in listed.items())


@pytest.mark.parametrize("point", POINTS)
def test_a_save_killed_at_any_point_leaves_latest_on_a_complete_checkpoint(tmp_path, monkeypatch, point):
    mgr = manager(tmp_path / "ck")
    save(mgr, 1)

    def crash(name, step):
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(manager_module, "_crash_point", crash)
    with pytest.raises(Crash):
        save(mgr, 2)
    monkeypatch.undo()
    # At the moment of the kill: latest names a complete directory, never the partial one.
    assert mgr.latest() is not None and is_complete(mgr.latest())
    expect_latest_now = 2 if point == "after_latest" else 1
    assert mgr.latest().name == step_dir_name(expect_latest_now)
    # The next start: leftovers removed, latest moved forward onto a save that completed its rename.
    fresh = manager(tmp_path / "ck")
    fresh.recover()
    assert not list((tmp_path / "ck").glob(".tmp-*"))
    resumed = 2 if point in ("after_rename", "after_latest") else 1
    assert fresh.choose("auto").name == step_dir_name(resumed)
    assert save(fresh, resumed + 1).name == step_dir_name(resumed + 1)


def test_retention_keeps_last_k_every_m_and_latest(tmp_path):
    mgr = manager(tmp_path / "ck", keep_last=2, keep_every=4)
    for step in range(1, 10):
        save(mgr, step)
    assert [p.name for p in mgr.complete_steps()] == ["step_00000004", "step_00000008", "step_00000009"]
    # `latest` pointing at an old checkpoint (a user's choice) protects it from retention.
    (tmp_path / "ck" / "latest").write_text("step_00000004\n")
    mgr.cfg.keep_every = 0
    mgr.cfg.keep_last = 1
    mgr.apply_retention()
    assert [p.name for p in mgr.complete_steps()] == ["step_00000004", "step_00000009"]


def test_recover_removes_leftovers_and_ignores_foreign_dirs(tmp_path):
    root = tmp_path / "ck"
    mgr = manager(root)
    save(mgr, 3)
    (root / ".tmp-step_00000004" / "zero").mkdir(parents=True)
    (root / ".tmp-delete-step_00000001").mkdir()
    (root / "step_00000009").mkdir()  # no trainer_state.json: not a checkpoint
    mgr.recover()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000009"]
    assert mgr.latest().name == "step_00000003"


def test_resume_rules(tmp_path):
    root = tmp_path / "ck"
    mgr = manager(root)
    assert mgr.choose("auto") is None and mgr.choose("never") is None
    for step in (1, 2):
        save(mgr, step)
    with pytest.raises(CineSceneError, match="already holds checkpoints"):
        mgr.choose("never")
    with pytest.raises(CineSceneError, match="no such checkpoint directory"):
        mgr.choose(str(tmp_path / "nope"))
    with pytest.raises(CineSceneError, match="would rewind this run"):
        mgr.choose(str(root / "step_00000001"))
    other = manager(tmp_path / "other")
    assert other.choose(str(root)).name == "step_00000002"  # a checkpoints dir: its latest
    assert other.choose(str(root / "step_00000001")).name == "step_00000001"


def test_compatibility_errors_name_what_differs(tmp_path):
    saved = record(
        3,
        params={"a.weight": [4, 4], "b.bias": [4], "gone.weight": [2]},
        trainable=["a.weight"],
        world_size=2,
    )
    current = {"a.weight": [8, 4], "b.bias": [4], "new.weight": [3]}
    with pytest.raises(CineSceneError) as info:
        check_compatible(saved, tmp_path, params=current, trainable=["a.weight"], zero_stage=3, world_size=2)
    message = str(info.value)
    assert "another model config" in message and "a.weight [4, 4] vs [8, 4]" in message
    assert "only in the checkpoint: gone.weight" in message and "only in this model: new.weight" in message
    same = dict(saved.params)
    with pytest.raises(CineSceneError, match="ZeRO-3 shards; this run uses ZeRO-2"):
        check_compatible(saved, tmp_path, params=same, trainable=["a.weight"], zero_stage=2, world_size=2)
    with pytest.raises(CineSceneError, match="trainable set differs: b.bias"):
        check_compatible(
            saved, tmp_path, params=same, trainable=["a.weight", "b.bias"], zero_stage=3, world_size=2
        )
    check_compatible(
        saved, tmp_path, params=same, trainable=["a.weight"], zero_stage=3, world_size=4
    )  # resharded
    with pytest.raises(CineSceneError, match="needs ZeRO-3"):
        check_compatible(
            record(3, params=same, trainable=["a.weight"], world_size=2, zero_stage=2),
            tmp_path,
            params=same,
            trainable=["a.weight"],
            zero_stage=2,
            world_size=1,
        )
