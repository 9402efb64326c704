"""Logging: one format, rank-0 console, per-rank log files in the run dir, no bars off a TTY."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from cinescene import log
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


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_run_progress_false_keeps_bars_off_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(log, "_console", terminal)
    monkeypatch.delenv("RANK", raising=False)
    try:
        assert list(progress(range(3), desc="bar")) == [0, 1, 2] and "bar" in terminal.getvalue()
        log.show_progress_bars(False)  # run.progress=false
        terminal.truncate(0)
        terminal.seek(0)
        assert list(progress(range(3), desc="bar")) == [0, 1, 2] and terminal.getvalue() == ""
        assert not log.progress_bars_shown()
    finally:
        log.show_progress_bars(True)


LIBRARY_CHATTER = """
import logging, os, sys, warnings
from cinescene.log import console, console_out, get_logger, send_output_to, setup_logging

send_output_to(sys.argv[1])
setup_logging("INFO", rank=0)
print("a library print")                                   # DeepSpeed's op-build message
os.write(2, b"a C++ message\\n")                            # written below Python
warnings.warn("a library warning")
deepspeed = logging.getLogger("DeepSpeed")                  # a library logger with its own stdout handler
deepspeed.addHandler(logging.StreamHandler(sys.stdout))
deepspeed.warning("Setting accelerator to CPU")
get_logger("train").info("our line")
print("the result", file=console_out())
"""


def test_library_output_goes_to_the_log_file_and_our_lines_to_the_console(tmp_path):
    log_file = tmp_path / "logs" / "rank0.log"
    out = subprocess.run(
        [sys.executable, "-c", LIBRARY_CHATTER, str(log_file)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert out.stdout == "the result\n"
    assert out.stderr.count("\n") == 1 and "I [r0] cinescene.train: our line" in out.stderr
    captured = log_file.read_text()
    for chatter in ("a library print", "a C++ message", "a library warning", "Setting accelerator to CPU"):
        assert chatter in captured


@pytest.mark.parametrize(
    "argv",
    [
        ["--verbose", "train", "c.yaml"],
        ["train", "c.yaml", "--verbose"],
        ["data", "inspect", "d", "--verbose"],
        ["bench", "loader", "c.yaml", "--verbose"],
    ],
)
def test_verbose_is_accepted_anywhere(argv):
    from cinescene.launch.cli import build_parser

    args, extra = build_parser().parse_known_args(argv)
    assert args.verbose and not extra
    assert not build_parser().parse_known_args(argv[:0] + [a for a in argv if a != "--verbose"])[0].verbose


INTERNAL_ERROR = """
import sys
import cinescene.launch.commands.model as model
from cinescene.log import send_output_to

def broken(args):
    raise RuntimeError("a bug, not a user error")
model.run_info = broken
send_output_to(sys.argv[1])
from cinescene.launch.cli import main
sys.exit(main(["model", "info", "configs/model/tiny.yaml"]))
"""


def test_an_internal_error_is_one_console_line_and_a_traceback_in_the_log(tmp_path, repo_root):
    log_file = tmp_path / "rank0.log"
    out = subprocess.run(
        [sys.executable, "-c", INTERNAL_ERROR, str(log_file)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert (
        "cinescene model: error: internal error (RuntimeError: a bug, not a user error); the traceback is in "
        f"{log_file}" in out.stderr
    )
    assert "Traceback (most recent call last)" in log_file.read_text()


def test_an_internal_error_still_reaches_the_console_when_its_log_is_on_a_full_disk(repo_root):
    out = subprocess.run(
        [sys.executable, "-c", INTERNAL_ERROR, "/dev/full"],  # every write: ENOSPC
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr == (
        "cinescene model: error: internal error (RuntimeError: a bug, not a user error); its traceback could "
        "not be written (No space left on device)\n"
    )


def test_an_internal_error_of_a_command_without_a_log_file_is_one_line_too(tmp_path, repo_root):
    script = INTERNAL_ERROR.replace("send_output_to(sys.argv[1])\n", "")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=repo_root, capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert (
        "cinescene model: error: internal error (RuntimeError: a bug, not a user error); the traceback is in "
        f"{tmp_path}/cinescene-model-error-" in out.stderr
    )
    (saved,) = tmp_path.glob("cinescene-model-error-*.log")
    assert (
        "Traceback (most recent call last)" in saved.read_text()
        and "a bug, not a user error" in saved.read_text()
    )
    verbose = subprocess.run(
        [sys.executable, "-c", script.replace('"model", "info"', '"--verbose", "model", "info"')],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr
