"""Logging: one format, rank-0 console, per-rank log files in the run dir, no bars off a TTY."""
from __future__ import annotations

import logging

from cinescene.log import get_logger, progress, setup_logging


def _flush():
    for handler in logging.getLogger("cinescene").handlers:
        handler.flush()


def test_rank0_console_and_run_log_file(tmp_path, capsys):
    setup_logging("INFO", run_dir=tmp_path, rank=0)
    get_logger("train").info("step 1 loss 0.5")
    _flush()
    err = capsys.readouterr().err
    assert "I [r0] cinescene.train: step 1 loss 0.5" in err
    assert "step 1 loss 0.5" in (tmp_path / "logs" / "rank0.log").read_text()


def test_other_ranks_log_only_warnings_to_console_but_everything_to_file(tmp_path, capsys):
    setup_logging("INFO", run_dir=tmp_path, rank=3)
    log = get_logger("cinescene.data")
    log.info("quiet on console")
    log.warning("skipped corrupt shard")
    _flush()
    err = capsys.readouterr().err
    assert "quiet on console" not in err and "W [r3] cinescene.data: skipped corrupt shard" in err
    text = (tmp_path / "logs" / "rank3.log").read_text()
    assert "quiet on console" in text and "skipped corrupt shard" in text


def test_log_file_appends_across_restarts(tmp_path):
    for attempt in range(2):
        setup_logging("INFO", run_dir=tmp_path, rank=0)
        get_logger("x").info("attempt %d", attempt)
        _flush()
    text = (tmp_path / "logs" / "rank0.log").read_text()
    assert "attempt 0" in text and "attempt 1" in text


def test_progress_passes_through_without_tty(capsys):
    assert list(progress(range(5), desc="x")) == [0, 1, 2, 3, 4]
    assert "it/s" not in capsys.readouterr().err
