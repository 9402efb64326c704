"""End-to-end `cinescene train` runs (2 local gloo ranks, ZeRO-3): exact resume after SIGUSR1, a kill -9
in the middle of a checkpoint save, and the clear errors for another model config or world size.

The resume and model-config tests run the README's smoke job (real tiny CineScene model, synthetic
shards made once per session) for a few steps; the kill tests use the stand-in model and data of
:mod:`tests.train.standins` through the same launch path (spawner, signals, checkpoints), since
only the save protocol matters there. Every run starts in its own session: the test crash hook
kills the run's whole process group, as `kill -9` of a job would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cinescene.ckpt.layout import is_complete
from cinescene.ckpt.rank_state import read_rank_state
from cinescene.ckpt.weights import consolidated_state_dict, weights_digest
from tests.fixtures.wandb_files import read_history, read_run_ids

from .conftest import REPO, finish, start

pytestmark = pytest.mark.dist

SMOKE_STEPS = int(os.environ.get("CINESCENE_TEST_SMOKE_STEPS", "10"))


def smoke_cmd(run_dir, shards, *extra):
    return [
        sys.executable,
        "-m",
        "cinescene",
        "train",
        "configs/experiments/smoke.yaml",
        "--nproc",
        "2",
        f"run.dir={run_dir}",
        f"data.train_shards={shards}",
        f"train.max_steps={SMOKE_STEPS}",
        f"checkpoint.every_steps={max(2, SMOKE_STEPS // 2)}",
        *extra,
    ]


def standin_cmd(run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "tests.train.standin_train",
        str(run_dir),
        "launch.nproc=2",
        "tracking.wandb.mode=disabled",
        *extra,
    ]


def metrics(run_dir: Path):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_steps(run_dir: Path, count: int, proc: subprocess.Popen, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    while len(metrics(run_dir)) < count:
        assert proc.poll() is None, f"the run ended before step {count}"
        assert time.monotonic() < deadline, f"no step {count} within {timeout} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def uninterrupted(smoke_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "A"
    proc = start(smoke_cmd(run_dir, smoke_shards), run_dir.parent / "A.log")
    assert finish(proc) == 0, (run_dir.parent / "A.log").read_text()[-3000:]
    return run_dir


def final_step_dir(run_dir: Path) -> Path:
    ck = Path(run_dir) / "checkpoints"
    return ck / (ck / "latest").read_text().strip()


def test_preempted_and_resumed_smoke_run_ends_bit_identical(uninterrupted, smoke_shards, tmp_path):
    run_dir, log = tmp_path / "B", tmp_path / "B.log"
    proc = start(smoke_cmd(run_dir, smoke_shards), log)
    wait_for_steps(run_dir, SMOKE_STEPS // 2 + 1, proc)  # past the mid-run checkpoint
    os.kill(proc.pid, signal.SIGUSR1)  # to the launcher, which forwards it to both ranks
    assert finish(proc) == 124, log.read_text()[-3000:]
    stopped = len(metrics(run_dir))
    assert SMOKE_STEPS // 2 < stopped < SMOKE_STEPS and final_step_dir(run_dir).name == f"step_{stopped:08d}"

    proc = start(smoke_cmd(run_dir, smoke_shards), log)
    assert finish(proc) == 0, log.read_text()[-3000:]
    assert f"resumed from {run_dir}/checkpoints/step_{stopped:08d}" in log.read_text()

    a, b = metrics(uninterrupted), metrics(run_dir)
    assert [r["step"] for r in b] == list(range(1, SMOKE_STEPS + 1))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    digest_a, digest_b = (
        weights_digest(final_step_dir(uninterrupted)),
        weights_digest(final_step_dir(run_dir)),
    )
    print(f"\nfinal weights sha256: uninterrupted {digest_a}\n                      resumed       {digest_b}")
    assert digest_a == digest_b
    for rank in (0, 1):  # the EMA shards too
        name = f"rank_states/rank_{rank:05d}.safetensors"
        ema_a = read_rank_state(final_step_dir(uninterrupted) / name)["callbacks"]["ema"]["slices"]
        ema_b = read_rank_state(final_step_dir(run_dir) / name)["callbacks"]["ema"]["slices"]
        assert all(torch.equal(ema_a[k]["value"], ema_b[k]["value"]) for k in ema_a)
    # One W&B run across the restart, holding the same losses as metrics.jsonl.
    ids = read_run_ids(run_dir)
    assert len(ids) == 2 and len(set(ids)) == 1
    history = read_history(run_dir)
    assert [history[r["step"]]["loss"] for r in b] == pytest.approx([r["loss"] for r in b])


def test_another_model_config_is_refused_naming_the_keys(uninterrupted, smoke_shards, tmp_path):
    before = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    more_steps = f"train.max_steps={SMOKE_STEPS + 2}"  # else a finished run has nothing to do
    proc = start(
        smoke_cmd(uninterrupted, smoke_shards, more_steps, "model.num_layers=3", "model.ffn_dim=96"),
        tmp_path / "mismatch.log",
    )
    assert finish(proc) == 1
    text = (tmp_path / "mismatch.log").read_text()
    line = next(ln for ln in text.splitlines() if "cinescene train: error:" in ln)
    assert "was saved for another model config" in line
    assert "blocks.0.ffn.0.weight [128, 64] vs [96, 64]" in line and "only in this model: blocks.2." in line
    assert sorted(p.name for p in (uninterrupted / "checkpoints").iterdir()) == before  # nothing touched


@pytest.mark.parametrize("point", ["after_shards", "before_rename", "after_rename"])
def test_kill_during_a_save_resumes_from_the_last_good_checkpoint(tmp_path, point):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    args = ("train.max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=3")
    proc = start(standin_cmd(run_dir, *args), log, CINESCENE_TEST_CRASH_AT=f"{point}@4")
    assert finish(proc) == -signal.SIGKILL, log.read_text()[-3000:]
    ck = run_dir / "checkpoints"
    committed = point == "after_rename"
    latest = ck / (ck / "latest").read_text().strip()
    assert latest.name == "step_00000002" and is_complete(latest)  # never the directory being written
    assert (ck / "step_00000004").exists() == committed
    assert (ck / ".tmp-step_00000004").exists() != committed

    proc = start(standin_cmd(run_dir, *args), log)
    assert finish(proc) == 0, log.read_text()[-3000:]
    resumed = "step_00000004" if committed else "step_00000002"
    text = log.read_text()
    assert f"resumed from {ck}/{resumed}" in text
    if committed:
        assert "is complete and newer" in text  # `latest` moved forward at start
    assert (
        not list(ck.glob(".tmp-*"))
        and is_complete(ck / "step_00000004")
        and is_complete(ck / "step_00000006")
    )
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_resume_at_another_world_size_continues_the_same_run(tmp_path):
    """2 ranks for 4 steps, then 1 rank (same global batch: accumulation 2) to step 8, against 2 ranks
    throughout: the ZeRO shards are resharded through DeepSpeed's universal checkpoint, the data cursor
    and the per-sample noise do not depend on the layout, so only float summation order differs."""
    args = (
        "train.max_steps=8",
        "train.global_batch_size=4",
        "checkpoint.every_steps=4",
        "train.ema.enabled=true",
        "train.weight_decay=0.1",
    )
    whole, split, log = tmp_path / "whole", tmp_path / "split", tmp_path / "run.log"
    assert finish(start(standin_cmd(whole, *args), log)) == 0, log.read_text()[-3000:]
    assert finish(start(standin_cmd(split, *args, "train.max_steps=4"), log)) == 0, log.read_text()[-3000:]
    assert finish(start(standin_cmd(split, *args, "launch.nproc=1"), log)) == 0, log.read_text()[-3000:]
    assert "resharded from 2 to 1 ranks" in log.read_text()
    assert not list((split / "checkpoints").glob(".tmp-*"))
    a, b = consolidated_state_dict(final_step_dir(whole)), consolidated_state_dict(final_step_dir(split))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    loss_gap = max(abs(x["loss"] - y["loss"]) for x, y in zip(metrics(whole), metrics(split)))
    print(
        f"\nresumed 2 -> 1 ranks: max |weight difference| {worst:.1e}, max |loss difference| {loss_gap:.1e}"
    )
    assert worst < 1e-6 and loss_gap < 1e-6
    ema_whole = consolidated_state_dict(final_step_dir(whole), ema=True)  # two ranks' slices
    ema_split = consolidated_state_dict(final_step_dir(split), ema=True)  # one rank's
    assert max((ema_whole[k] - ema_split[k]).abs().max().item() for k in ema_whole) < 1e-6


def test_ranks_with_different_scene_counts_train_in_lockstep(smoke_shards, tmp_path):
    """data.scene_images_min: the two ZeRO-3 ranks hold samples with different numbers of scene images in the
    same step, yet call the same modules in the same order (a mismatch would hang the parameter gathers)."""
    from cinescene.config import load_config
    from cinescene.data.loader import build_train_loader

    cfg, _ = load_config(
        REPO / "configs/experiments/smoke.yaml",
        [f"data.train_shards={smoke_shards}", "data.scene_images_min=1"],
    )
    first = [
        next(
            iter(
                build_train_loader(
                    cfg.data,
                    cfg.model,
                    rank=rank,
                    world_size=2,
                    seed=cfg.run.seed,
                    micro_batch_size=cfg.train.micro_batch_size,
                )
            )
        )["scene_counts"].tolist()
        for rank in (0, 1)
    ]
    assert sorted(set(first[0])) != sorted(set(first[1])), first  # the ranks' count groups differ
    run_dir, log = tmp_path / "V", tmp_path / "V.log"
    proc = start(smoke_cmd(run_dir, smoke_shards, "data.scene_images_min=1", "train.max_steps=4"), log)
    assert finish(proc, timeout=300) == 0, log.read_text()[-3000:]
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] == r["loss"] for r in rows)
