"""Checkpoint cadence, retention and resume policy."""

from __future__ import annotations

from dataclasses import dataclass

from .base import non_negative, require


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

    def validate(self) -> None:
        non_negative(self.every_steps, "every_steps")
        require(self.keep_last >= 1, "keep_last", "a value >= 1", self.keep_last)
        non_negative(self.keep_every, "keep_every")
        require(bool(self.resume), "resume", "'auto', 'never' or a checkpoint path", self.resume)
