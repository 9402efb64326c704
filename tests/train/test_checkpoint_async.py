"""checkpoint.async in one process: the host copy, the writer thread, at most one save in flight, retention
after the commit, failed writes, the host memory check, and the start-up pointer repair on a full disk.

One rank, no process group (the collectives reduce to the rank's own flags); the fake ZeRO engine of
:mod:`tests.ckpt.fakes` hands its live optimizer tensors to the save like DeepSpeed does. A gate on the
save's named points holds the writer thread where a test wants it.
"""

from __future__ import annotations

import errno
import io
import logging
import threading
import time

import pytest
import torch

from cinescene import host_memory
from cinescene.ckpt import ds_engine, latest_step_dir
from cinescene.ckpt.layout import is_complete
from cinescene.ckpt.manifest import read_manifest
from cinescene.config.base import ConfigError
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.train.checkpoint import CheckpointManager
from cinescene.train.checkpoint import saving as saving_module
from cinescene.train.checkpoint.background import CheckpointWriteError
from cinescene.train.checkpoint.host_copy import HostCopy, storage_sizes
from tests.ckpt.fakes import FakeZeroEngine, rank_state, record


def manager(root, background: bool = True, **cfg) -> CheckpointManager:
    config = CheckpointConfig(**cfg)
    config.background_write = background
    return CheckpointManager(root, config, rank=0, world_size=1)


class Gate:
    """Holds the thread that reaches ``point`` until :meth:`open`; :meth:`reached` waits until it is there."""

    def __init__(self, monkeypatch, point: str):
        self.point = point
        self._reached, self._open = threading.Event(), threading.Event()
        original = saving_module.save_point

        def hold(name, step, rank):
            original(name, step, rank)
            if name == point:
                self._reached.set()
                assert self._open.wait(30), f"gate at {point} never opened"

        monkeypatch.setattr(saving_module, "save_point", hold)

    def reached(self) -> None:
        assert self._reached.wait(30), f"the save never reached {self.point}"

    def open(self) -> None:
        self._open.set()


def files_of(step_dir):
    """The step's ZeRO and rank files with their digests (trainer_state.json holds the save's time)."""
    return {
        k: v.digest for k, v in read_manifest(step_dir).items() if k.startswith(("zero/", "rank_states/"))
    }


def test_a_background_save_writes_its_step_while_the_loop_changes_the_state(tmp_path, monkeypatch):
    reference = FakeZeroEngine(step=1)
    expected = manager(tmp_path / "sync", background=False).save(reference, record(1), rank_state(1), "")

    engine = FakeZeroEngine(step=1)
    mgr = manager(tmp_path / "ck")
    gate = Gate(monkeypatch, "write")  # after the host copy, before any byte is written
    mgr.begin_save(engine, record(1), rank_state(1), "")
    gate.reached()
    mgr.before_update()  # the copy is done: returns at once
    engine.update()  # the next optimizer step changes every tensor the save holds, in place
    assert mgr.poll() is None and not (tmp_path / "ck" / "step_00000001").exists()
    gate.open()
    path = mgr.finish()
    assert path.name == "step_00000001" and is_complete(path)
    assert (tmp_path / "ck" / "latest").read_text() == "step_00000001\n"
    # Byte for byte what a synchronous save of the unchanged state wrote.
    assert files_of(path) == files_of(expected)
    figures = mgr.last_save
    assert figures.step == 1 and figures.bytes > 0 and figures.blocked_s < figures.total_s


def test_the_update_waits_for_the_host_copy_and_poll_reports_the_commit(tmp_path, monkeypatch):
    mgr = manager(tmp_path / "ck")
    gate = Gate(monkeypatch, "copy")
    mgr.begin_save(FakeZeroEngine(step=1), record(1), rank_state(1), "")
    gate.reached()
    threading.Timer(0.3, gate.open).start()
    started = time.perf_counter()
    mgr.before_update()  # blocks until the copy is taken
    assert time.perf_counter() - started >= 0.25
    committed = None
    deadline = time.monotonic() + 30
    while committed is None:  # the loop's step boundaries: the commit starts once every rank has written
        assert time.monotonic() < deadline
        committed = mgr.poll()
        time.sleep(0.01)
    assert committed.name == "step_00000001" and mgr.poll() is None and mgr.finish() is None
    assert mgr.last_save.copy_wait_s >= 0.25 and mgr.last_save.blocked_s >= mgr.last_save.copy_wait_s


def test_the_next_save_waits_for_the_one_in_flight_and_logs_the_wait(tmp_path, monkeypatch):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("cinescene.train.checkpoint")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        mgr = manager(tmp_path / "ck", keep_last=1)
        engine = FakeZeroEngine(step=1)
        gate = Gate(monkeypatch, "after_shards")
        mgr.begin_save(engine, record(1), rank_state(1), "")
        gate.reached()
        threading.Timer(0.3, gate.open).start()
        engine.update()
        mgr.begin_save(engine, record(2), rank_state(2), "")  # waits for step 1 to be committed first
        assert is_complete(tmp_path / "ck" / "step_00000001")
        assert mgr.finish().name == "step_00000002"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    waited = [r.getMessage() for r in records if "still being written" in r.getMessage()]
    assert len(waited) == 1 and "the save of step_00000001 was still being written: waited" in waited[0]
    assert mgr.last_save.waited_s >= 0.2
    # Retention ran after each commit: keep_last=1 leaves the newest only.
    assert [p.name for p in mgr.complete_steps()] == ["step_00000002"]


def test_retention_never_touches_a_step_being_written(tmp_path, monkeypatch):
    mgr = manager(tmp_path / "ck", keep_last=1)
    mgr.save(FakeZeroEngine(step=1), record(1), rank_state(1), "")
    gate = Gate(monkeypatch, "after_rank_states")
    mgr.begin_save(FakeZeroEngine(step=2), record(2), rank_state(2), "")
    gate.reached()
    assert mgr.apply_retention() == []  # step 1 is `latest`; .tmp-step_00000002 is no checkpoint yet
    assert (tmp_path / "ck" / ".tmp-step_00000002" / "zero").is_dir()
    gate.open()
    assert mgr.finish().name == "step_00000002"
    assert [p.name for p in mgr.complete_steps()] == ["step_00000002"]


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_a_failed_write_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch, background):
    mgr = manager(tmp_path / "ck", background=background)
    mgr.save(FakeZeroEngine(step=1), record(1), rank_state(1), "")

    def full_disk(path, state):
        if path.name.endswith("optim_states.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, state)

    original = ds_engine.write_shard
    monkeypatch.setattr(ds_engine, "write_shard", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        mgr.save(FakeZeroEngine(step=2), record(2), rank_state(2), "")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"the save of step 2 failed: rank 0: cannot write {tmp_path}/ck/.tmp-step_00000002/zero/"
        "zero_pp_rank_0_mp_rank_00_optim_states.pt: No space left on device; step_00000001 stays the "
        "newest complete checkpoint"
    )
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step_00000001"]
    assert (tmp_path / "ck" / "latest").read_text() == "step_00000001\n"
    monkeypatch.undo()
    assert mgr.save(FakeZeroEngine(step=3), record(3), rank_state(3), "").name == "step_00000003"


def test_a_failed_commit_keeps_the_previous_pointer(tmp_path, monkeypatch):
    mgr = manager(tmp_path / "ck")
    mgr.save(FakeZeroEngine(step=1), record(1), rank_state(1), "")
    real_replace = saving_module.os.replace

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saving_module.os, "replace", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        mgr.save(FakeZeroEngine(step=2), record(2), rank_state(2), "")
    monkeypatch.setattr(saving_module.os, "replace", real_replace)
    assert f"cannot write {tmp_path}/ck/latest: No space left on device (it was left as it was)" in str(
        info.value
    )
    assert "step_00000002 is complete but `latest` still names step_00000001" in str(info.value)
    assert (tmp_path / "ck" / "latest").read_text() == "step_00000001\n"
    assert not list((tmp_path / "ck").glob(".tmp-*"))
    fresh = manager(tmp_path / "ck")
    fresh.recover()  # the next start moves `latest` onto the complete step
    assert latest_step_dir(fresh.root).name == "step_00000002"


@pytest.mark.parametrize("pointer", ["damaged", "stale"])
def test_start_up_on_a_full_disk_never_loses_the_pointer(tmp_path, monkeypatch, pointer):
    mgr = manager(tmp_path / "ck", background=False, keep_last=3)
    for step in (1, 2):
        mgr.save(FakeZeroEngine(step=step), record(step), rank_state(step), "")
    latest = tmp_path / "ck" / "latest"
    latest.write_text("step_00000009\n" if pointer == "damaged" else "step_00000001\n")
    before = latest.read_bytes()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saving_module.os, "replace", full_disk)
    with pytest.raises(CheckpointWriteError, match=r"cannot write .*/ck/latest: No space left on device"):
        manager(tmp_path / "ck").recover()
    assert latest.read_bytes() == before  # replaced in one step or not at all
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step_00000001", "step_00000002"]
    monkeypatch.undo()
    fresh = manager(tmp_path / "ck")
    fresh.recover()
    assert latest.read_text() == "step_00000002\n"


def test_the_host_copy_is_measured_refused_or_reserved_at_start_up(tmp_path, monkeypatch):
    engine = FakeZeroEngine(step=1)
    need = sum(storage_sizes([engine.optimizer.state_dict()])) + 64
    monkeypatch.setattr(host_memory, "available_bytes", lambda: need * 2 - 1)
    with pytest.raises(ConfigError) as info:
        manager(tmp_path / "ck").prepare_background(engine, [64], local_ranks=2)
    assert str(info.value).startswith("checkpoint.async: the host copy of a save needs ")
    assert "for the 2 rank(s) on a node" in str(info.value) and "set checkpoint.async=false" in str(
        info.value
    )
    monkeypatch.setattr(host_memory, "available_bytes", lambda: need * 2)
    mgr = manager(tmp_path / "ck")
    mgr.prepare_background(engine, [64], local_ranks=2)
    assert mgr.host_copy_bytes == need
    mgr.begin_save(engine, record(1), rank_state(1), "")
    mgr.finish()
    assert mgr.host_copy_bytes == need + 4  # only the RNG state's buffer was not reserved
    mgr.save(engine, record(2), rank_state(2), "")  # waited for: written from the live state, no copy
    assert mgr.host_copy_bytes == need + 4
    manager(tmp_path / "off", background=False).prepare_background(engine, [64], local_ranks=2)  # no-op


def test_the_plans_host_copy_figure_is_refused_before_the_engine_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 1999)
    with pytest.raises(ConfigError) as info:
        manager(tmp_path / "ck").check_planned_host_copy(1000, local_ranks=2)
    assert str(info.value).startswith("checkpoint.async: the host copy of a save needs ")
    assert " per rank (cinescene plan's figure), " in str(info.value)
    manager(tmp_path / "ck").check_planned_host_copy(999, local_ranks=2)
    manager(tmp_path / "ck").check_planned_host_copy(None, local_ranks=2)  # no plan figure: measured later
    manager(tmp_path / "off", background=False).check_planned_host_copy(10**6, local_ranks=2)  # no-op


def test_the_host_copy_keeps_views_sharing_and_types_and_reuses_its_buffers():
    base = torch.randn(100)
    tagged = torch.randn(5)
    tagged.ds_id = 3  # DeepSpeed's attribute on its flat groups: torch.save writes it
    betas = (0.9, 0.999)  # one object in two places: pickled once, then referenced
    tree = {
        "a": base[10:20],
        "b": base[30:50].view(4, 5),
        "p": torch.nn.Parameter(torch.randn(3, 4)),
        "empty": [torch.empty(0), torch.empty(0)],
        "grad": (torch.ones(2, requires_grad=True), 3, "text"),
        "scalar": torch.tensor(7),
        "tagged": [tagged],
        "groups": [{"betas": betas}, {"betas": betas, "shape": torch.Size([2, 3])}],
    }

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    host = HostCopy(pin=False)
    copied = host.copy(tree)
    host.settle()
    assert saved(copied) == saved(tree)  # same storages, views and types: the same file
    assert copied["b"].untyped_storage().data_ptr() == copied["a"].untyped_storage().data_ptr()
    assert isinstance(copied["p"], torch.nn.Parameter) and copied["grad"][0].requires_grad
    assert copied["tagged"][0].ds_id == 3 and copied["groups"][0]["betas"] is copied["groups"][1]["betas"]
    snapshot = tree["a"].clone()
    base.add_(1.0)
    assert torch.equal(copied["a"], snapshot)
    held = host.nbytes
    host.release()
    host.copy(tree)
    assert host.nbytes == held  # the next save reuses the pool


@pytest.mark.slow
def test_a_run_refuses_checkpoint_async_without_the_host_memory_before_its_first_step(tmp_path, monkeypatch):
    from cinescene.distributed.env import standalone
    from cinescene.train.entry import run_rank

    from .standins import standin_components, tiny_config

    args = ("checkpoint.async=true", "train.ema.enabled=true", "tracking.wandb.mode=disabled")
    monkeypatch.setattr(host_memory, "available_bytes", lambda: 1000)
    with pytest.raises(ConfigError) as info:
        run_rank(tiny_config(tmp_path / "small", *args), standalone(1), standin_components())
    assert str(info.value).startswith("checkpoint.async: the host copy of a save needs ")
    assert "but only 1.00 KB of host memory is available on " in str(info.value)
    assert " per rank (cinescene plan's figure), " in str(info.value)  # before the engine was built
    assert not (tmp_path / "small" / "metrics.jsonl").exists()  # refused before the first step
    monkeypatch.undo()
    assert run_rank(tiny_config(tmp_path / "big", *args), standalone(1), standin_components()) == 0
    log = (tmp_path / "big" / "logs" / "rank0.log").read_text()
    assert (
        "checkpoint.async: the host copy of a save takes " in log and "for the 1 rank(s) on this node" in log
    )
