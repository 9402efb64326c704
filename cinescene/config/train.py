"""Optimisation: objective, batch arithmetic, optimizer, schedule, EMA, guards."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import at_most, in_range, non_negative, one_of, positive, require

# A micro batch is what one rank holds in memory at once (CineScene trains with a global batch of 16);
# thousands of video samples per rank is a typo, and would only surface as an out-of-memory kill.
MAX_MICRO_BATCH = 1024


@dataclass
class FlowMatchingConfig:
    # sigma' = s*sigma / (1 + (s-1)*sigma); CineScene trains with s = 15.
    shift: float = 15.0
    # "uniform": plain MSE; "wan": the Wan/DiffSynth bell-shaped timestep weighting.
    weighting: str = "uniform"
    num_train_timesteps: int = 1000

    def validate(self) -> None:
        positive(self.shift, "shift")
        one_of(self.weighting, "weighting", ["uniform", "wan"])
        positive(self.num_train_timesteps, "num_train_timesteps")


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.999
    # Start averaging after this many optimizer steps (copy before that).
    start_step: int = 0

    def validate(self) -> None:
        in_range(self.decay, "decay", 0.0, 1.0)
        non_negative(self.start_step, "start_step")


@dataclass
class TrainConfig:
    max_steps: int = 10_000
    # Global batch = micro_batch_size x grad_accum x data-parallel size. Give
    # global_batch_size to have grad_accum derived (it must divide exactly).
    micro_batch_size: int = 1
    grad_accum: int = 1
    global_batch_size: int | None = None
    lr: float = 5e-5
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    # Parameters that never decay, besides every 1-D parameter (biases, norm scales): glob
    # patterns over names. Wan's adaLN `modulation` tables and learned tokens act like embeddings.
    no_decay: list[str] = field(default_factory=lambda: ["*embedding*", "*modulation*", "*token*"])
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0
    # "bf16" (DeepSpeed bf16 mixed precision) or "fp32".
    precision: str = "bf16"
    # Optimizer implementation: "auto" = on CUDA DeepSpeed's FusedAdam (DeepSpeedCPUAdam with
    # parallel.offload_optimizer=cpu), on CPU-only machines torch.optim.AdamW; "torch" forces it.
    optimizer_impl: str = "auto"
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    # Condition dropout for classifier-free guidance (probabilities per sample).
    text_dropout: float = 0.1
    scene_dropout: float = 0.0
    ema: EMAConfig = field(default_factory=EMAConfig)
    # Stop after this many non-finite steps in a row (each one is skipped).
    max_consecutive_nonfinite: int = 5

    def validate(self) -> None:
        positive(self.max_steps, "max_steps")
        positive(self.micro_batch_size, "micro_batch_size")
        at_most(
            self.micro_batch_size,
            "micro_batch_size",
            MAX_MICRO_BATCH,
            "samples one rank decodes, holds and runs through the model at once; "
            "raise train.grad_accum instead",
        )
        positive(self.grad_accum, "grad_accum")
        if self.global_batch_size is not None:
            positive(self.global_batch_size, "global_batch_size")
        positive(self.lr, "lr")
        in_range(self.min_lr_ratio, "min_lr_ratio", 0.0, 1.0)
        non_negative(self.warmup_steps, "warmup_steps")
        one_of(self.schedule, "schedule", ["constant", "cosine"])
        non_negative(self.weight_decay, "weight_decay")
        require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            "betas",
            "two values in [0, 1)",
            list(self.betas),
        )
        positive(self.eps, "eps")
        non_negative(self.grad_clip, "grad_clip")
        one_of(self.precision, "precision", ["bf16", "fp32"])
        one_of(self.optimizer_impl, "optimizer_impl", ["auto", "torch"])
        in_range(self.text_dropout, "text_dropout", 0.0, 1.0)
        in_range(self.scene_dropout, "scene_dropout", 0.0, 1.0)
        positive(self.max_consecutive_nonfinite, "max_consecutive_nonfinite")
