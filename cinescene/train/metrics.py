"""Throughput, MFU and memory of each step.

MFU = flops_per_sample x samples/s / (peak FLOP/s per device x devices), with
``flops_per_sample`` from :mod:`cinescene.models.flops` (forward + backward
of the DiT over the extended sequence, plus the frozen scene encoder's
forward) and the peak from ``tracking.peak_tflops`` or the device table
below (dense, no sparsity; bf16 runs use the tensor-core figure, fp32 runs
the plain fp32 figure, since torch leaves TF32 off for matmuls by default).
On CPU there is no honest table entry: MFU stays null unless
``tracking.peak_tflops`` is set.
"""

from __future__ import annotations

import torch

from cinescene import host_memory

from .callbacks import Callback, StepResult, TrainState

# (substring of torch.cuda.get_device_name(), {precision: dense peak TFLOP/s}); first match wins,
# so the specific names come before the generic ones.
DEVICE_PEAK_TFLOPS = [
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("GH200", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
]


def device_peak_tflops(precision: str, device_name: str | None = None) -> float | None:
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for needle, peaks in DEVICE_PEAK_TFLOPS:
        if needle in device_name:
            return peaks.get(precision)
    return None


def memory_gb() -> dict[str, float]:
    """Accelerator memory now and its peak since the last call (CUDA), or the process's resident memory
    now and at its peak (CPU, read by :mod:`cinescene.host_memory`)."""
    if torch.cuda.is_available():
        stats = {
            "mem_gb": torch.cuda.memory_allocated() / 2**30,
            "max_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
        }
        torch.cuda.reset_peak_memory_stats()
        return stats
    rss = host_memory.current_rss_bytes()
    return {"mem_gb": rss / 2**30, "max_mem_gb": max(rss, host_memory.peak_rss_bytes()) / 2**30}


def mfu(
    flops_per_sample: float | None, samples_per_s: float, peak_tflops: float | None, devices: int
) -> float | None:
    if not flops_per_sample or not peak_tflops:
        return None
    return flops_per_sample * samples_per_s / (peak_tflops * 1e12 * devices)


class ThroughputMonitor(Callback):
    """samples/s, tokens/s (extended sequence), MFU and memory of every step."""

    name = "throughput"

    def __init__(
        self,
        *,
        flops_per_sample: float | None,
        tokens_per_sample: int | None,
        peak_tflops: float | None,
        devices: int,
    ):
        self.flops_per_sample = flops_per_sample
        self.tokens_per_sample = tokens_per_sample
        self.peak_tflops = peak_tflops
        self.devices = devices

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        rate = result.samples / max(result.step_time_s, 1e-9)
        state.metrics.update(
            {
                "samples_per_s": rate,
                "tokens_per_s": rate * self.tokens_per_sample if self.tokens_per_sample else None,
                "mfu": mfu(self.flops_per_sample, rate, self.peak_tflops, self.devices),
                "step_time_s": result.step_time_s,
                "data_time_s": result.data_time_s,
                **memory_gb(),
            }
        )
