"""Distributed layout: ZeRO stage, offload, sequence parallelism, backend."""
from __future__ import annotations

from dataclasses import dataclass

from .base import one_of, positive


@dataclass
class ParallelConfig:
    zero_stage: int = 3
    # Offload targets for ZeRO: "none" or "cpu" (optimizer states / parameters).
    offload_optimizer: str = "none"
    offload_params: str = "none"
    # Ulysses sequence-parallel group size (DeepSpeed DistributedAttention). 1 = off.
    sequence: int = 1
    # "auto" picks nccl when CUDA is available, else gloo.
    backend: str = "auto"
    # Seconds a collective may wait before the process group reports a hang.
    timeout_s: int = 1800

    def validate(self) -> None:
        one_of(self.zero_stage, "zero_stage", [0, 1, 2, 3])
        one_of(self.offload_optimizer, "offload_optimizer", ["none", "cpu"])
        one_of(self.offload_params, "offload_params", ["none", "cpu"])
        positive(self.sequence, "sequence")
        one_of(self.backend, "backend", ["auto", "gloo", "nccl"])
        positive(self.timeout_s, "timeout_s")
        if self.offload_params != "none":
            one_of(self.zero_stage, "zero_stage", [3])
