"""Logging for every command: one format, rank-0 console, a log file per rank and run.

Console: rank 0 logs at the configured level; other ranks only print
warnings and errors (tagged with their rank) so a 64-rank job stays readable.
Files: ``<run_dir>/logs/rank<R>.log`` holds every rank's full log, appended
across restarts, so a preempted and requeued run keeps one history.
Progress bars are drawn only when the console is a terminal (never in SLURM logs).

The console is for the user: our log lines, progress bars, one-line errors.
A process of a run sends everything else it writes -- library warnings and
prints (DeepSpeed's accelerator notice, its op-build chatter), C++ messages,
Python warnings, tracebacks -- to its rank's log file (:func:`send_output_to`:
file descriptors 1 and 2 point there, :func:`console` keeps the terminal).
``--verbose`` (:data:`VERBOSE_ENV`, inherited by spawned ranks) or
``run.log_level=DEBUG`` leaves library output on the console as it comes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO, TypeVar

from cinescene.errors import env_int
from cinescene.run_dir import RunDir

ROOT = "cinescene"
# Set by `cinescene --verbose`: library output stays on the console (children inherit it).
VERBOSE_ENV = "CINESCENE_VERBOSE"
FORMAT = "%(asctime)s %(levelname).1s [r%(rank)s] %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"
T = TypeVar("T")


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def env_rank() -> int:
    """This process's global rank from the launcher's environment (0 when alone)."""
    for var in ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if var in os.environ:
            return env_int(var)
    return 0


_console: TextIO | None = None  # the terminal's stderr once fds 1 and 2 go to a log file
_console_out: TextIO | None = None  # and its stdout, for a command's printed result
_output_file: Path | None = None


def verbose(level: str = "INFO") -> bool:
    """Whether library output belongs on the console: ``--verbose`` or a DEBUG log level."""
    return os.environ.get(VERBOSE_ENV) == "1" or level.upper() == "DEBUG"


def console() -> TextIO:
    """Where our log lines, progress bars and one-line errors go: the terminal's stderr, also after
    :func:`send_output_to` pointed file descriptors 1 and 2 at a log file."""
    return _console if _console is not None else sys.stderr


def console_out() -> TextIO:
    """Where a command prints its result (a table, JSON, a path): the terminal's stdout, also after
    :func:`send_output_to`."""
    return _console_out if _console_out is not None else sys.stdout


def output_file() -> Path | None:
    """The log file that receives this process's other output, if :func:`send_output_to` was called."""
    return _output_file


def send_output_to(log_file: str | os.PathLike) -> None:
    """Send everything this process writes to fds 1 and 2 (and its Python warnings) to ``log_file``,
    appending, while :func:`console` keeps the terminal. Call it before importing chatty libraries."""
    global _console, _console_out, _output_file
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if _console is None:
        _console = _keep(sys.stderr, 2)
        _console_out = _keep(sys.stdout, 1)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _output_file = log_file
    logging.captureWarnings(False)  # Python warnings go to sys.stderr again: the file now


def _keep(stream: TextIO, fd: int) -> TextIO:
    """A line-buffered text stream on a copy of ``fd``, which stays on the terminal when ``fd`` moves."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=encoding, errors="backslashreplace")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def setup_logging(
    level: str = "INFO", run_dir: str | os.PathLike | None = None, rank: int | None = None
) -> logging.Logger:
    """Configure the ``cinescene`` logger tree; safe to call again (handlers are replaced)."""
    rank = env_rank() if rank is None else rank
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    formatter = logging.Formatter(FORMAT, DATEFMT)
    terminal = logging.StreamHandler(console())
    terminal.setLevel(getattr(logging, level.upper()) if rank == 0 else logging.WARNING)
    terminal.setFormatter(formatter)
    terminal.addFilter(_RankFilter(rank))
    logger.addHandler(terminal)
    if run_dir is not None:
        log_file = RunDir(run_dir).rank_log(rank)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a")
        file_handler.setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.INFO)
        file_handler.setFormatter(formatter)
        file_handler.addFilter(_RankFilter(rank))
        logger.addHandler(file_handler)
    return logger


_progress_bars = True


def show_progress_bars(enabled: bool) -> None:
    """``run.progress``: false keeps every progress bar off, even on a terminal."""
    global _progress_bars
    _progress_bars = bool(enabled)


def progress_bars_shown() -> bool:
    """Bars are drawn on rank 0, on a terminal, unless ``run.progress`` turned them off."""
    return _progress_bars and env_rank() == 0 and console().isatty()


def progress(items: Iterable[T], enabled: bool = True, **tqdm_kwargs) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when :func:`progress_bars_shown`; otherwise pass through."""
    if enabled and progress_bars_shown():
        from tqdm import tqdm

        yield from tqdm(items, file=console(), **tqdm_kwargs)
    else:
        yield from items
