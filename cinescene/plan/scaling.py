"""Step time from 1 to 64 nodes at constant work per GPU, and where communication starts to dominate.

Each GPU keeps the layout's micro batch, accumulation and sequence-parallel
degree; the data-parallel degree, and with it the global batch, grows with
the nodes. Compute per GPU stays the same; ZeRO's collectives span more
ranks: across nodes they run at the inter-node bandwidth, and each ring step
adds a hop's latency, so their time grows with the rank count while the
bytes each rank sends stay about the same. Efficiency is throughput per GPU
against one node's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .planner import Layout, PlanInputs, StepTime, layout_time

NODE_COUNTS = (1, 2, 4, 8, 16, 32, 64)
SEARCH_LIMIT_NODES = 4096


@dataclass(frozen=True)
class ScalingRow:
    nodes: int
    layout: Layout
    time: StepTime
    efficiency: float

    @property
    def samples_per_s(self) -> float:
        return self.layout.global_batch / self.time.step_s


def _at(layout: Layout, gpus: int) -> Layout:
    return Layout(gpus, layout.micro_batch, layout.sequence, layout.grad_accum)


def scaling_table(inputs: PlanInputs, layout: Layout, tflops: float | None = None) -> list[ScalingRow]:
    per_node = inputs.gpus_per_node
    rows, base = [], None
    for nodes in NODE_COUNTS:
        if nodes * per_node % layout.sequence:
            continue  # sequence-parallel groups must not straddle nodes
        at = _at(layout, nodes * per_node)
        time = layout_time(inputs, at, tflops)
        per_gpu = at.global_batch / time.step_s / at.gpus
        base = base or per_gpu
        rows.append(ScalingRow(nodes, at, time, per_gpu / base))
    return rows


def communication_dominates_from(
    inputs: PlanInputs, layout: Layout, tflops: float | None = None
) -> int | None:
    """The smallest power-of-two node count whose communication outlasts the compute; None up to the limit."""
    nodes = 1
    while nodes <= SEARCH_LIMIT_NODES:
        if nodes * inputs.gpus_per_node % layout.sequence:
            return None
        if layout_time(inputs, _at(layout, nodes * inputs.gpus_per_node), tflops).comm_dominates:
            return nodes
        nodes *= 2
    return None
