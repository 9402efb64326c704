"""Logging for every command: one format, rank-0 console, a log file per rank and run.

Console: rank 0 logs at the configured level; other ranks only print
warnings and errors (tagged with their rank) so a 64-rank job stays readable.
Files: ``<run_dir>/logs/rank<R>.log`` holds every rank's full log, appended
across restarts, so a preempted and requeued run keeps one history.
Progress bars are drawn only when stderr is a terminal (never in SLURM logs).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional, TypeVar

ROOT = "cinescene"
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
            return int(os.environ[var])
    return 0


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def setup_logging(level: str = "INFO", run_dir: Optional[str | os.PathLike] = None,
                  rank: Optional[int] = None) -> logging.Logger:
    """Configure the ``cinescene`` logger tree; safe to call again (handlers are replaced)."""
    rank = env_rank() if rank is None else rank
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    formatter = logging.Formatter(FORMAT, DATEFMT)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(getattr(logging, level.upper()) if rank == 0 else logging.WARNING)
    console.setFormatter(formatter)
    console.addFilter(_RankFilter(rank))
    logger.addHandler(console)
    if run_dir is not None:
        log_dir = Path(run_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / f"rank{rank}.log", mode="a")
        file_handler.setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.INFO)
        file_handler.setFormatter(formatter)
        file_handler.addFilter(_RankFilter(rank))
        logger.addHandler(file_handler)
    return logger


def progress(items: Iterable[T], enabled: bool = True, **tqdm_kwargs) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar on rank 0 when stderr is a TTY; otherwise pass through."""
    if enabled and env_rank() == 0 and sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, **tqdm_kwargs)
    else:
        yield from items
