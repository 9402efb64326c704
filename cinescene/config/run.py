"""Run-level settings: where outputs go, seeds, determinism, logging."""

from __future__ import annotations

from dataclasses import dataclass

from .base import non_negative, one_of, require

# Longest file name most file systems allow (bytes); run.name names a directory (runs/<name>).
MAX_NAME_BYTES = 255


@dataclass
class RunConfig:
    # Everything a run writes (checkpoints, metrics.jsonl, logs, wandb) lives here: any path the user gives.
    dir: str = "runs/${run.name}"
    # A name (the default run.dir's last part, the W&B run name), never a path: no '/', not '.' or '..'.
    name: str = "default"
    seed: int = 0
    # Deterministic algorithms + fixed reduction order; required for bit-exact resume on CPU.
    deterministic: bool = False
    log_level: str = "INFO"
    # Console progress bars are drawn only when stdout is a TTY; this can force them off.
    progress: bool = True
    # Set by the launcher; a user rarely sets it (e.g. to name a config snapshot).
    config_path: str | None = None

    def validate(self) -> None:
        require(
            self.name not in ("", ".", "..")
            and "/" not in self.name
            and "\\" not in self.name
            and "\0" not in self.name
            and len(self.name.encode()) <= MAX_NAME_BYTES,
            "name",
            "a name, not a path (no '/', not '.' or '..'; run.dir says where the run goes)",
            self.name,
        )
        require(bool(str(self.dir).strip()), "dir", "a directory path", self.dir)
        non_negative(self.seed, "seed")
        one_of(self.log_level.upper(), "log_level", ["DEBUG", "INFO", "WARNING", "ERROR"])
