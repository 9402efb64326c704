"""Checkpoint cadence, retention, resume policy, and whether saves are written in the background."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import non_negative, require

# The YAML key is `checkpoint.async`; `async` is a Python keyword, so the field is declared through
# the class namespace (no generated __init__/repr/eq code names it) and read as `background_write`.
ASYNC_KEY = "async"


@dataclass
class CheckpointConfig:
    # Directory for step dirs and the `latest` pointer; default <run.dir>/checkpoints.
    dir: str | None = None
    every_steps: int = 100
    # Retention: keep the newest `keep_last` plus every step divisible by `keep_every` (0 = none).
    keep_last: int = 2
    keep_every: int = 0
    # "auto": resume from <dir>/latest when present; "never"; or a checkpoint path (a step, checkpoints or
    # run directory), which seeds a run without checkpoints of its own: once <dir> holds one, the run
    # resumes from its own (a requeue repeats the command line; a fork never rewinds).
    resume: str = "auto"
    # Hash every file of the checkpoint against its manifest before resuming (the ranks share the files);
    # a damaged one falls back like any damage. false checks sizes only (`bench checkpoint` shows the cost).
    verify: bool = True
    # Also save when training finishes.
    save_final: bool = True
    # checkpoint.async: at a save, each rank copies its partition (weights, optimizer state, EMA, RNG)
    # into host memory and the loop goes on while a background thread writes and commits it (same
    # files, same protocol). Costs one partition of host memory per rank, checked at start-up. Off by
    # default: a host without that memory free would be refused; the recipe turns it on.
    __annotations__[ASYNC_KEY] = "bool"
    locals()[ASYNC_KEY] = field(default=False, init=False, repr=False, compare=False)

    @property
    def background_write(self) -> bool:
        """``checkpoint.async``."""
        return bool(getattr(self, ASYNC_KEY))

    @background_write.setter
    def background_write(self, value: bool) -> None:
        setattr(self, ASYNC_KEY, bool(value))

    def validate(self) -> None:
        non_negative(self.every_steps, "every_steps")
        require(self.keep_last >= 1, "keep_last", "a value >= 1", self.keep_last)
        non_negative(self.keep_every, "keep_every")
        require(bool(self.resume), "resume", "'auto', 'never' or a checkpoint path", self.resume)
