"""Distributed layout: ZeRO stage, offload, sequence parallelism, backend."""

from __future__ import annotations

from dataclasses import dataclass

from .base import non_negative, one_of, positive, require


@dataclass
class ParallelConfig:
    # ZeRO stage 1, 2 or 3. Stage 0 is refused: the NaN guard relies on ZeRO's optimizer
    # discarding a step with a non-finite gradient norm, and DeepSpeed's stage-0 fp32 path applies it.
    zero_stage: int = 3
    # Offload targets for ZeRO: "none" or "cpu" (optimizer states / parameters).
    offload_optimizer: str = "none"
    offload_params: str = "none"
    # Ulysses sequence-parallel group size (DeepSpeed DistributedAttention). 1 = off.
    # Ranks r*N .. r*N+N-1 form one group and read the same batch.
    sequence: int = 1
    # "auto" picks nccl when CUDA is available, else gloo.
    backend: str = "auto"
    # Seconds a collective may wait before the process group reports a hang.
    timeout_s: int = 1800
    # Build the model inside deepspeed.zero.Init (each rank materialises only its shard).
    # null (auto): with ZeRO-3 when the model has at least zero_init_min_params parameters.
    zero_init: bool | None = None
    zero_init_min_params: int = 200_000_000
    # ZeRO communication bucket (elements); larger buckets mean fewer, bigger collectives.
    reduce_bucket_size: int = 50_000_000
    # ZeRO-3: parameters smaller than this stay unpartitioned on every rank (elements).
    param_persistence_threshold: int = 100_000

    def validate(self) -> None:
        require(
            self.zero_stage in (1, 2, 3),
            "zero_stage",
            "one of [1, 2, 3] (stage 0 cannot skip non-finite steps)",
            self.zero_stage,
        )
        one_of(self.offload_optimizer, "offload_optimizer", ["none", "cpu"])
        one_of(self.offload_params, "offload_params", ["none", "cpu"])
        positive(self.sequence, "sequence")
        one_of(self.backend, "backend", ["auto", "gloo", "nccl"])
        positive(self.timeout_s, "timeout_s")
        if self.offload_params != "none":
            one_of(self.zero_stage, "zero_stage", [3])
        non_negative(self.zero_init_min_params, "zero_init_min_params")
        positive(self.reduce_bucket_size, "reduce_bucket_size")
        non_negative(self.param_persistence_threshold, "param_persistence_threshold")
