"""``data/skipped``: the loader's per-batch skip counts, summed over data-parallel ranks, cumulative,
resumed with the checkpoint, in metrics.jsonl and W&B, and a rank-0 warning when it grows."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from cinescene.config.tracking import TrackingConfig, WandbConfig
from cinescene.distributed.env import standalone
from cinescene.train.callbacks import StepResult, TrainState
from cinescene.train.entry import run_rank
from cinescene.train.tracking import STEP_SKIPPED_SAMPLES, MetricsLogger, Tracker
from tests.fixtures.wandb_files import read_history

from .conftest import REPO
from .standins import skipped_before, standin_components, tiny_config


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_result(step: int, skipped: int) -> StepResult:
    return StepResult(
        step, 1.0, 1.0, 0.1, True, 4, 0.1, 0.0, extra={"text_dropped": 0.5, STEP_SKIPPED_SAMPLES: skipped}
    )


def test_metrics_logger_keeps_the_cumulative_count_and_warns_when_it_grows(tmp_path, caplog):
    cfg = TrackingConfig(wandb=WandbConfig(mode="disabled"))
    tracker = Tracker(cfg, tmp_path, is_main=True, run_name="r", config={}, run_id=None, resume_step=0)
    logger = MetricsLogger(tracker, every=2)
    state = TrainState(max_steps=6)
    with caplog.at_level(logging.WARNING, logger="cinescene"):
        for step, skipped in [(1, 2), (2, 0), (3, 0), (4, 0)]:
            logger.on_step_end(state, step_result(step, skipped))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "step 2: 2 unreadable samples skipped so far" in warnings[0]
    resumed = MetricsLogger(tracker, every=2)  # from the checkpoint after step 4
    resumed.load_state_dict(logger.state_dict())
    for step, skipped in [(5, 1), (6, 0)]:
        resumed.on_step_end(state, step_result(step, skipped))
    tracker.close()
    logged = rows(tmp_path)
    assert [(r["step"], r["data/skipped"]) for r in logged] == [(2, 2), (4, 2), (6, 3)]
    assert all(STEP_SKIPPED_SAMPLES not in r and r["text_dropped"] == 0.5 for r in logged)
    quiet = MetricsLogger(
        Tracker(cfg, tmp_path / "other", is_main=False, run_name="r", config={}, run_id=None, resume_step=0),
        every=1,
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cinescene"):
        quiet.on_step_end(state, step_result(1, 5))
    assert not caplog.records  # only rank 0 warns


@pytest.mark.slow
def test_a_resumed_run_continues_the_count(tmp_path):
    """1 rank, micro batch 2: step s has consumed positions 0 .. 2s-1; a stop at step 3 changes nothing."""
    args = ("train.max_steps=6", "checkpoint.every_steps=3", "tracking.wandb.mode=offline")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_rank(tiny_config(whole, *args), standalone(1), standin_components()) == 0
    assert run_rank(tiny_config(split, *args, "train.max_steps=3"), standalone(1), standin_components()) == 0
    assert run_rank(tiny_config(split, *args), standalone(1), standin_components()) == 0
    expected = [skipped_before(2 * step) for step in range(1, 7)]
    assert expected[-1] == 2  # positions 3 and 10
    for run_dir in (whole, split):
        assert [r["data/skipped"] for r in rows(run_dir)] == expected
    history = read_history(whole)
    assert [history[s]["data/skipped"] for s in range(1, 7)] == expected


@pytest.mark.dist
def test_ranks_are_summed_and_the_count_survives_a_change_of_world_size(tmp_path):
    """2 ranks for 4 steps, then 1 rank (same global batch of 4) to step 8."""
    args = [
        "train.max_steps=8",
        "train.global_batch_size=4",
        "checkpoint.every_steps=4",
        "tracking.wandb.mode=disabled",
    ]
    log = tmp_path / "run.log"

    def train(*extra):
        command = [
            sys.executable,
            "-m",
            "tests.train.standin_train",
            str(tmp_path / "run"),
            "launch.nproc=2",
            *args,
            *extra,
        ]
        env = dict(os.environ)
        env.pop("RANK", None)  # left by an in-process run of this session: it would make this one a rank
        with open(log, "ab") as handle:
            assert (
                subprocess.run(
                    command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=600
                ).returncode
                == 0
            ), log.read_text()[-3000:]

    train("train.max_steps=4")
    train("launch.nproc=1")
    expected = [skipped_before(4 * step) for step in range(1, 9)]
    assert expected[-1] == 5
    assert [r["data/skipped"] for r in rows(tmp_path / "run")] == expected
    assert "unreadable samples skipped so far" in log.read_text()
