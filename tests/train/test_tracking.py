"""metrics.jsonl (append, truncate on resume), secret scrubbing, W&B offline round trip."""

from __future__ import annotations

import json
import logging

from cinescene.config.tracking import TrackingConfig, WandbConfig
from cinescene.log import setup_logging
from cinescene.provenance import git_state
from cinescene.run_dir import MetricsFile
from cinescene.secrets import MASK
from cinescene.train.tracking import Tracker, install_secret_filter, scrub, secret_values
from tests.fixtures.wandb_files import (
    read_history,
    read_metric_definitions,
    read_run_ids,
    read_run_starts,
    read_summary,
    wait_until_written,
)


def test_truncate_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo'
    )
    assert MetricsFile(path).keep_through(5) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert MetricsFile(path).keep_through(5) == 0
    assert MetricsFile(tmp_path / "absent.jsonl").keep_through(3) == 0


def test_scrub_masks_secret_keys_and_env_values(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "abcdef0123456789")
    monkeypatch.setenv("MY_TOKEN", "tok-98765")
    config = {
        "tracking": {
            "wandb": {"api_key": "xyz", "notes": "run with abcdef0123456789 inside", "project": "p"}
        },
        "data": {"access_token": None, "list": ["tok-98765", 3]},
        "keep_last": 2,
        "model": {"num_register_tokens": 4, "vggt_tokens": True},
    }
    clean = scrub(config)
    text = json.dumps(clean)
    assert "abcdef0123456789" not in text and "tok-98765" not in text and "xyz" not in text
    assert clean["tracking"]["wandb"]["api_key"] == MASK and clean["tracking"]["wandb"]["project"] == "p"
    assert clean["data"]["access_token"] is None and clean["keep_last"] == 2
    assert clean["model"] == {
        "num_register_tokens": 4,
        "vggt_tokens": True,
    }  # numbers and flags hold no secret
    assert secret_values() == sorted(secret_values(), key=len, reverse=True)


def test_log_lines_never_show_secret_values(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-value-42")
    setup_logging("INFO", tmp_path, rank=0)
    install_secret_filter()
    logging.getLogger("cinescene.test").info("key is %s", "s3cr3t-value-42")
    for handler in logging.getLogger("cinescene").handlers:
        handler.flush()
    text = (tmp_path / "logs" / "rank0.log").read_text()
    assert "s3cr3t-value-42" not in text and "key is ***" in text


def test_tracker_writes_jsonl_and_an_offline_wandb_run_that_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "local-secret-0000")
    cfg = TrackingConfig(wandb=WandbConfig(mode="offline", project="t"))
    config = {"train": {"lr": 0.1}, "tracking": {"note": "local-secret-0000"}}
    first = Tracker(cfg, tmp_path, is_main=True, run_name="r", config=config, run_id=None, resume_step=0)
    for step in (1, 2, 3):
        first.log(
            step,
            {"loss": 1.0 / step, "lr": 0.1, "mfu": None, "grad_norm": float("inf") if step == 3 else 1.0},
        )
    first.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["grad_norm"] == "inf" and rows[0]["mfu"] is None
    # A resume from step 2 drops line 3 and continues the same W&B run.
    second = Tracker(
        cfg, tmp_path, is_main=True, run_name="r", config=config, run_id=first.run_id, resume_step=2
    )
    second.log(3, {"loss": 0.25})
    second.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    wait_until_written(tmp_path)
    assert read_run_ids(tmp_path) == [first.run_id, first.run_id]
    history = read_history(tmp_path)
    assert {s: h["loss"] for s, h in history.items()} == {1: 1.0, 2: 0.5, 3: 0.25}
    assert all(b"local-secret-0000" not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_only_rank_zero_writes(tmp_path):
    tracker = Tracker(
        TrackingConfig(wandb=WandbConfig(mode="offline")),
        tmp_path,
        is_main=False,
        run_name="r",
        config={},
        run_id=None,
        resume_step=0,
    )
    tracker.log(1, {"loss": 1.0})
    tracker.close()
    assert not any(tmp_path.iterdir())


def test_eval_series_are_defined_against_the_training_step_and_the_run_names_code_and_checkpoint(tmp_path):
    """The run files say: eval/* is plotted against trainer/step, which every row carries; the config and the
    code's commit are in the run record; the summary names the last checkpoint, also across a resume."""
    cfg = TrackingConfig(wandb=WandbConfig(mode="offline", project="t"))
    config = {"train": {"lr": 0.1, "max_steps": 4}}
    first = Tracker(cfg, tmp_path, is_main=True, run_name="r", config=config, run_id=None, resume_step=0)
    first.log(1, {"loss": 1.0})
    first.log(2, {"loss": 0.5, "eval/psnr": 11.0, "eval/seconds": 0.3})
    first.close(124, preempted=True, checkpoint=str(tmp_path / "checkpoints" / "step_00000002"))
    second = Tracker(
        cfg, tmp_path, is_main=True, run_name="r", config=config, run_id=first.run_id, resume_step=2
    )
    second.log(3, {"loss": 0.25})
    second.log(4, {"loss": 0.125, "eval/psnr": 12.5})
    second.close(0, checkpoint=str(tmp_path / "checkpoints" / "step_00000004"))
    wait_until_written(tmp_path)

    assert read_metric_definitions(tmp_path) == {"trainer/step": "", "eval/*": "trainer/step"}
    history = read_history(tmp_path)
    assert sorted(history) == [1, 2, 3, 4]
    assert all(row["trainer/step"] == step for step, row in history.items())
    assert {s: r["eval/psnr"] for s, r in history.items() if "eval/psnr" in r} == {2: 11.0, 4: 12.5}
    starts = read_run_starts(tmp_path)
    commit = git_state()["commit"]
    assert len(starts) == 2 and all(s["git_commit"] == (commit or "") for s in starts)
    assert starts[0]["config"]["train"] == {"lr": 0.1, "max_steps": 4}
    summary = read_summary(tmp_path)
    assert summary["checkpoint/path"] == str(tmp_path / "checkpoints" / "step_00000004")
    assert summary["checkpoint/step"] == 4 and summary["trainer/step"] == 4
