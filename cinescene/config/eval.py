"""Evaluation hooks during training and the `cinescene eval` command."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from .base import non_negative, positive


@dataclass
class EvalConfig:
    # Run the eval hook every N training steps (0 = off).
    every_steps: int = 0
    num_samples: int = 2
    sample_steps: int = 50
    cfg_scale: float = 5.0
    metrics: List[str] = field(default_factory=lambda: ["psnr", "ssim"])
    log_videos: bool = True

    def validate(self) -> None:
        non_negative(self.every_steps, "every_steps")
        positive(self.num_samples, "num_samples")
        positive(self.sample_steps, "sample_steps")
        non_negative(self.cfg_scale, "cfg_scale")
