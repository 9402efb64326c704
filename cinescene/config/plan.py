"""The assumptions `cinescene plan` states next to its figures (cinescene.plan).

The plan's memory figures follow from the config alone; its times need
hardware figures that no config determines. They live here, each with its
source, so a user on a different cluster changes them once for `cinescene
plan`, the start-up check of `cinescene train` and the preemption check of
`cinescene submit` alike. docs/PLAN.md says how each one is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import in_range, non_negative, positive


@dataclass
class PlanConfig:
    # Model TFLOP/s each GPU achieves (the MFU convention of cinescene.models.flops: activation
    # recomputation not counted). An assumption until `cinescene bench step` has run on a GPU:
    # 40% of an H100's 989 dense bf16 TFLOP/s, about what long-sequence DiT training reaches.
    achieved_tflops: float = 400.0
    # Collective bus bandwidth per GPU in GB/s inside a node (NVLink; NCCL's all-gather on 8 x H100
    # SXM reaches about 350) and across nodes (a 400 Gb/s NIC per GPU: 50 GB/s line rate, ~40 achieved).
    intra_node_gbps: float = 350.0
    inter_node_gbps: float = 40.0
    # Latency of one step of a ring collective (one hop), microseconds.
    link_latency_us: float = 10.0
    # Write bandwidth of the checkpoint file system per node, GB/s (the preemption budget: a save
    # must finish within launch.slurm.signal's lead time). Measure yours: `cinescene bench checkpoint`.
    checkpoint_write_gbps: float = 2.0
    # Device memory the plan never hands out: the CUDA context, NCCL's buffers (GB), and the share the
    # caching allocator loses to fragmentation.
    reserve_gb: float = 2.0
    fragmentation: float = 0.05

    def validate(self) -> None:
        for key in ("achieved_tflops", "intra_node_gbps", "inter_node_gbps", "checkpoint_write_gbps"):
            positive(getattr(self, key), key)
        non_negative(self.link_latency_us, "link_latency_us")
        non_negative(self.reserve_gb, "reserve_gb")
        in_range(self.fragmentation, "fragmentation", 0.0, 0.5)
