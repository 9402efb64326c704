"""Resharding, proven: ZeRO-3 checkpoints of 2 ranks resumed at 1, 3 and 4 ranks, and of 4 ranks at 2.

Right after loading (before any step) each resumed run saves what it holds (tests/ckpt/reshard_driver.py);
its consolidated fp32 weights, Adam moments, step counters, DeepSpeed counters and EMA must equal the
resumed checkpoint's exactly. The runs then go on, and their losses must stay within 1e-6 of an
uninterrupted 2-rank run at the same global batch (12: only the summation order differs). Stand-in model
and data (tests/train/standins.py), real DeepSpeed over gloo, one process per rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cinescene.ckpt.weights import TrainedWeights
from cinescene.ckpt.zero import KEYS
from tests.train.conftest import finish, start

pytestmark = [pytest.mark.dist, pytest.mark.slow]

ARGS = (
    "train.global_batch_size=12",
    "train.micro_batch_size=1",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=5",
    "train.ema.enabled=true",
    "train.weight_decay=0.1",
    "tracking.wandb.mode=disabled",
)


def run(argv, log: Path) -> None:
    proc = start([sys.executable, "-m", *argv], log)
    assert finish(proc) == 0, log.read_text()[-4000:]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reshard")


@pytest.fixture(scope="module")
def whole(root) -> Path:
    """2 ranks, 6 steps uninterrupted, checkpoints every 2 steps."""
    run_dir = root / "whole"
    run(
        ["tests.train.standin_train", str(run_dir), "launch.nproc=2", *ARGS, "train.max_steps=6"],
        root / "whole.log",
    )
    return run_dir


def resume_at(root: Path, name: str, nproc: int, source: Path, steps: int) -> Path:
    run_dir = root / name
    run(
        [
            "tests.ckpt.reshard_driver",
            str(run_dir),
            str(run_dir / "loaded"),
            f"launch.nproc={nproc}",
            *ARGS,
            f"train.max_steps={steps}",
            f"checkpoint.resume={source}",
        ],
        root / f"{name}.log",
    )
    return run_dir


@pytest.fixture(scope="module")
def at_four(root, whole) -> Path:
    return resume_at(root, "2to4", 4, whole / "checkpoints" / "step_00000002", 4)


def assert_loaded_exactly(saved: Path, loaded: Path, label: str) -> None:
    a, b = TrainedWeights(saved), TrainedWeights(loaded)
    assert a.record.world_size != b.record.world_size and b.names() == a.names()
    assert (b.record.step, b.record.consumed_samples) == (a.record.step, a.record.consumed_samples)
    for key in KEYS:
        for name in a.names():
            assert torch.equal(a.shards.tensor(name, key), b.shards.tensor(name, key)), (key, name)
    assert all(torch.equal(a.shards.step(n), b.shards.step(n)) for n in a.names())
    assert a.shards.counters() == b.shards.counters()
    assert all(torch.equal(a.tensor(n, ema=True), b.tensor(n, ema=True)) for n in a.names())
    print(
        f"\n{label}: fp32 weights, exp_avg, exp_avg_sq, step {float(a.shards.step(a.names()[0])):.0f}, "
        f"DeepSpeed counters and EMA of {len(a.names())} tensors equal to the saved ones bit for bit"
    )


def losses(run_dir: Path) -> dict:
    return {
        r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    }


def assert_loss_continues(whole: Path, resumed: Path, steps, label: str) -> None:
    reference, got = losses(whole), losses(resumed)
    assert sorted(got) == list(steps)
    gap = max(abs(reference[s] - got[s]) for s in steps)
    print(f"{label}: max |loss - uninterrupted loss| over steps {steps[0]}..{steps[-1]}: {gap:.1e}")
    assert gap < 1e-6


def assert_clean(run_dir: Path, log: Path, before: int, after: int) -> None:
    assert not list((run_dir / "checkpoints").glob(".tmp-*")) and not list(
        (run_dir / "loaded").glob(".tmp-*")
    )
    assert "resharded" in log.read_text() and f"from {before} to {after} ranks" in log.read_text()


@pytest.mark.parametrize("nproc", [1, 3])
def test_two_ranks_resume_at_another_world_size_exactly(root, whole, nproc):
    name = f"2to{nproc}"
    resumed = resume_at(root, name, nproc, whole / "checkpoints" / "step_00000002", 4)
    assert_loaded_exactly(whole / "checkpoints" / "step_00000002", resumed / "loaded", f"2 -> {nproc} ranks")
    assert_loss_continues(whole, resumed, range(3, 5), f"2 -> {nproc} ranks")
    assert_clean(resumed, root / f"{name}.log", 2, nproc)


def test_two_ranks_resume_at_four_exactly(root, whole, at_four):
    assert_loaded_exactly(whole / "checkpoints" / "step_00000002", at_four / "loaded", "2 -> 4 ranks")
    assert_loss_continues(whole, at_four, range(3, 5), "2 -> 4 ranks")
    assert_clean(at_four, root / "2to4.log", 2, 4)


def test_four_ranks_resume_at_two_exactly(root, whole, at_four):
    source = at_four / "checkpoints" / "step_00000004"
    resumed = resume_at(root, "4to2", 2, source, 6)
    assert_loaded_exactly(source, resumed / "loaded", "4 -> 2 ranks")
    assert_loss_continues(whole, resumed, range(5, 7), "4 -> 2 ranks")
    assert_clean(resumed, root / "4to2.log", 4, 2)
