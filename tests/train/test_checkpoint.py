"""Checkpoint manager: atomic step directories, `latest`, recovery after a killed save, retention, resuming.

A one-rank fake engine writes DeepSpeed's ZeRO-3 file layout through the checkpoint engine the manager
installs (:mod:`tests.ckpt.fakes`); crash points raise instead of SIGKILLing, which leaves the same files
behind as a killed process (the real SIGKILL is in test_train_integration.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from cinescene.ckpt.layout import is_complete, step_dir_name
from cinescene.ckpt.locate import latest_step_dir
from cinescene.ckpt.manifest import hash_file, read_manifest
from cinescene.ckpt.rank_state import read_rank_state
from cinescene.ckpt.record import read_record
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.errors import CineSceneError
from cinescene.train.checkpoint import CheckpointManager, check_compatible, validate
from cinescene.train.checkpoint import saving as saving_module
from cinescene.train.checkpoint.save_points import POINTS
from tests.ckpt.fakes import FakeZeroEngine, rank_state, record


class Crash(BaseException):
    """Stands for a SIGKILL: not an error the save protocol handles, so nothing cleans up after it."""


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
    assert latest_step_dir(mgr.root) == second
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

    def crash(name, step, rank):
        if name == point:
            raise Crash(name)

    monkeypatch.setattr(saving_module, "save_point", crash)
    with pytest.raises(Crash):
        save(mgr, 2)
    monkeypatch.undo()
    # At the moment of the kill: latest names a complete directory, never the partial one.
    assert latest_step_dir(mgr.root) is not None and is_complete(latest_step_dir(mgr.root))
    expect_latest_now = 2 if point == "after_latest" else 1
    assert latest_step_dir(mgr.root).name == step_dir_name(expect_latest_now)
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
    assert latest_step_dir(mgr.root).name == "step_00000003"


def test_resume_rules(tmp_path):
    root = tmp_path / "ck"
    mgr = manager(root)
    assert mgr.choose("auto") is None and mgr.choose("never") is None
    with pytest.raises(CineSceneError, match=r"checkpoint.resume=\S*nope: checkpoint not found"):
        mgr.choose(str(tmp_path / "nope"))  # an empty run: the path must name a checkpoint
    for step in (1, 2):
        save(mgr, step)
    with pytest.raises(CineSceneError, match="already holds checkpoints"):
        mgr.choose("never")
    other = manager(tmp_path / "other")
    assert other.choose(str(root)).name == "step_00000002"  # a checkpoints dir: its latest
    assert other.choose(str(root / "step_00000001")).name == "step_00000001"
    assert other.choose(str(root / "latest")).name == "step_00000002"  # `latest` itself: what it names


def test_a_fork_seeds_an_empty_run_only_and_never_rewinds(tmp_path, cinescene_logs):
    """checkpoint.resume=<path> applies to a run without checkpoints; a requeue repeats the command line, and
    must then continue the run's own checkpoints, never go back to the fork point."""
    source = manager(tmp_path / "source")
    for step in (1, 2):
        save(source, step)
    fork = manager(tmp_path / "fork")
    seed = str(source.root / "step_00000001")
    assert fork.choose(seed) == source.root / "step_00000001"
    save(fork, 2)
    assert fork.choose(seed) == fork.root / "step_00000002"
    assert "seeds an empty run only" in cinescene_logs.text and "resuming from them" in cinescene_logs.text
    save(fork, 3)  # a path into the run's own older checkpoints does not rewind it either
    assert fork.choose(str(fork.root / "step_00000002")) == fork.root / "step_00000003"
    assert fork.choose(str(tmp_path / "gone")) == fork.root / "step_00000003"  # nor is it even looked at


def overwrite_tensor_bytes(path, tensor, value: float = 1e30) -> None:
    """Overwrite the first two elements of ``tensor``'s bytes in ``path`` (same size: only a hash sees it)."""
    data = path.read_bytes()
    at = data.index(tensor.numpy().tobytes())
    path.write_bytes(data[:at] + torch.full((2,), value).numpy().tobytes() + data[at + 8 :])


def test_resume_hashes_every_file_and_falls_back_past_altered_bytes(tmp_path, cinescene_logs):
    """8 bytes of an optimizer shard overwritten, the size unchanged: refused by the hash, with one warning
    naming the file, and the previous checkpoint resumed; asked for by path, one error naming the file."""
    root = tmp_path / "ck"
    mgr = manager(root)
    for step in (1, 2):
        save(mgr, step)
    shard = root / "step_00000002" / "zero" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    engine = FakeZeroEngine(step=2)
    overwrite_tensor_bytes(shard, torch.cat([t.reshape(-1) for t in engine.weights.values()]) * 0.1)
    assert manager(root, verify=False).choose("auto").name == "step_00000002"  # sizes alone: accepted
    assert mgr.choose("auto").name == "step_00000001"
    warnings = [r.getMessage() for r in cinescene_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"{shard}: altered (xxh3_128 differs" in warnings[0]
    assert "falling back to step_00000001" in warnings[0]
    with pytest.raises(CineSceneError, match=f"{shard}: altered"):
        manager(tmp_path / "fork").choose(str(root / "step_00000002"))


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
