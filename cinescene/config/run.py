"""Run-level settings: where outputs go, seeds, determinism, logging."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import non_negative, one_of


@dataclass
class RunConfig:
    # Everything a run writes (checkpoints, metrics.jsonl, logs, wandb) lives here.
    dir: str = "runs/${run.name}"
    name: str = "default"
    seed: int = 0
    # Deterministic algorithms + fixed reduction order; required for bit-exact resume on CPU.
    deterministic: bool = False
    log_level: str = "INFO"
    # Console progress bars are drawn only when stdout is a TTY; this can force them off.
    progress: bool = True
    # Set by the launcher; a user rarely sets it (e.g. to name a config snapshot).
    config_path: Optional[str] = None

    def validate(self) -> None:
        non_negative(self.seed, "seed")
        one_of(self.log_level.upper(), "log_level", ["DEBUG", "INFO", "WARNING", "ERROR"])
