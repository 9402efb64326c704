"""Experiment tracking: Weights & Biases and the plain metrics.jsonl."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import one_of, optional_positive, positive


@dataclass
class WandbConfig:
    # "offline" writes the run under <run.dir>/wandb for a later `wandb sync`.
    mode: str = "offline"
    project: str = "cinescene"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None

    def validate(self) -> None:
        one_of(self.mode, "mode", ["online", "offline", "disabled"])


@dataclass
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # One JSON object per logged step in <run.dir>/metrics.jsonl.
    jsonl: bool = True
    log_every_steps: int = 1
    # Peak dense TFLOP/s of one device for MFU. None: from the trainer's device table
    # (H100 SXM bf16 989, ...); on CPU MFU stays null unless this is set.
    peak_tflops: float | None = None

    def validate(self) -> None:
        positive(self.log_every_steps, "log_every_steps")
        optional_positive(self.peak_tflops, "peak_tflops")
