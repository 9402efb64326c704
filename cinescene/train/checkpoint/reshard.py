"""Loading ZeRO-3 shards saved by another number of ranks, directly into the engine.

No conversion step and no work directory: each rank computes what its own
partition of every parameter holds at the new world size (elements
``rank * part .. rank * part + part`` of the flattened parameter, part =
``ceil(numel / world)``) and reads exactly those ranges of fp32 weights and
Adam moments from the saved ranks' files (:class:`~cinescene.ckpt.zero.ZeroShards`,
byte ranges, no pickle run). Memory is this rank's new partition plus one
read piece, whatever the model's size; every rank reads in parallel.

The partitions are handed to DeepSpeed's own same-layout loader
(``_rigid_load_state_dict``) in the layout it saves, with the optimizer's
current parameter-group settings (ours, from the config) and one step
counter per sub-group (the saved one of the group holding its parameters).
DeepSpeed's universal checkpoint does the same job through a converted copy
of the whole checkpoint on disk, reads that copy with unrestricted pickle,
and its converter holds whole rank files in memory.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from cinescene.ckpt.zero import KEYS, ZeroShards
from cinescene.errors import CineSceneError
from cinescene.host_memory import current_rss_bytes, human_bytes, peak_rss_bytes, reset_peak
from cinescene.log import get_logger

_log = get_logger("train.checkpoint")


@torch.no_grad()
def _fill(
    flat: torch.Tensor, offset: int, shards: ZeroShards, name: str, key: str, numel: int, part: int, rank: int
) -> None:
    """Write this rank's ``part`` elements of parameter ``name``'s ``key`` at ``offset`` of ``flat`` (zeros
    past the parameter's end), one read piece at a time."""
    start = rank * part
    count = max(0, min(part, numel - start))
    if count:
        flat.narrow(0, offset, count).copy_(shards.read(name, key, start, count))
    if count < part:
        flat.narrow(0, offset + count, part - count).zero_()


def load_resharded(engine, shards: ZeroShards) -> None:
    """Collective: load ``shards`` (any world size, ZeRO-3) into ``engine`` (ZeRO-3, this world size)."""
    opt = engine.optimizer
    if shards.stage != 3 or not hasattr(opt, "fp32_partitioned_groups_flat"):
        raise CineSceneError(
            f"{shards.dir.parent} holds ZeRO-{shards.stage} shards of {shards.world_size} ranks: "
            "loading at another world size needs ZeRO-3 on both sides (parallel.zero_stage=3); "
            f"resume it at {shards.world_size} ranks"
        )
    started = time.perf_counter()
    before = current_rss_bytes()
    measured = reset_peak()
    rank = dist.get_rank(group=opt.dp_process_group)
    world = dist.get_world_size(group=opt.dp_process_group)
    # The fp32 weights go straight into the engine's own flat buffers; the Adam moments into new tensors
    # beside them, which become the optimizer state. Besides those, memory holds one read piece at a time.
    flats: dict[str, list[torch.Tensor]] = {
        "fp32": list(opt.fp32_partitioned_groups_flat),
        "exp_avg": [],
        "exp_avg_sq": [],
    }
    steps: list[torch.Tensor] = []
    for sub, params in enumerate(opt.fp16_groups):
        target = opt.fp32_partitioned_groups_flat[sub]
        for key in ("exp_avg", "exp_avg_sq"):
            flats[key].append(torch.empty_like(target))
        offset, names = 0, []
        for param in params:
            name = opt.param_names[param]
            if name not in shards.params:
                raise CineSceneError(f"{shards.dir} has no shards of {name}")
            names.append(name)
            part = int(param.ds_tensor.ds_numel)
            if offset + part > target.numel():
                raise CineSceneError(
                    f"resharding {shards.dir}: sub-group {sub} holds {target.numel()} elements, "
                    f"fewer than its parameters need"
                )
            for key in KEYS:
                _fill(flats[key][sub], offset, shards, name, key, int(param.ds_numel), part, rank)
            offset += part
        if offset != target.numel():
            raise CineSceneError(
                f"resharding {shards.dir}: sub-group {sub} holds {target.numel()} elements, "
                f"its parameters {offset}"
            )
        steps.append(shards.step(names[0]) if names else torch.tensor(0.0))

    opt._set_fp32_optimizer_param_groups()
    try:
        template = opt.optimizer.state_dict()
        order = [id(p) for group in opt.optimizer.param_groups for p in group["params"]]
    finally:
        opt._clear_fp32_optimizer_param_groups()
    sub_of = {id(flat): sub for sub, flat in enumerate(opt.fp32_partitioned_groups_flat)}
    state = {}
    for index, tensor_id in enumerate(order):
        sub = sub_of[tensor_id]
        state[index] = {
            "step": steps[sub].clone(),
            "exp_avg": flats["exp_avg"][sub],
            "exp_avg_sq": flats["exp_avg_sq"][sub],
        }
    rigid = {
        "loss_scaler": opt.loss_scaler,
        "dynamic_loss_scale": opt.dynamic_loss_scale,
        "overflow": False,
        "optimizer_state_dict": {"state": state, "param_groups": template["param_groups"]},
        "fp32_flat_groups": flats["fp32"],
    }
    opt.checkpoint_event_prologue()
    opt._rigid_load_state_dict(rigid, load_optimizer_states=True)
    if opt.persistent_parameters:
        opt.persistent_parameters[0].partition(opt.persistent_parameters)
    opt.checkpoint_event_epilogue()

    for key, value in shards.counters().items():
        setattr(engine, key, value)
    buffers = dict(engine.module.named_buffers())
    for name, value in shards.buffers().items():
        if name in buffers:
            buffers[name].data.copy_(value)
    read = sum(3 * 4 * f.numel() for f in flats["fp32"])
    _log.info(
        "resharded %s from %d to %d ranks in %.2f s, reading %s of shards; peak RSS of rank %d %s%s "
        "(%s before: the rest is mostly the Adam moments, which the optimizer state needs anyway)",
        shards.dir.parent,
        shards.world_size,
        world,
        time.perf_counter() - started,
        human_bytes(read),
        dist.get_rank(),
        human_bytes(peak_rss_bytes()),
        "" if measured else " (process life-time)",
        human_bytes(before),
    )
