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
from typing import Dict, List

import torch
import torch.distributed as dist

from cinescene.ckpt.memory import human_bytes, peak_rss_bytes, reset_peak
from cinescene.ckpt.zero import KEYS, ZeroShards
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("train.checkpoint")


def _partition(shards: ZeroShards, name: str, numel: int, part: int, rank: int) -> Dict[str, torch.Tensor]:
    """This rank's ``part`` elements of parameter ``name`` for every key, zero-padded past its end."""
    start = rank * part
    count = max(0, min(part, numel - start))
    pieces = {}
    for key in KEYS:
        piece = torch.zeros(part, dtype=torch.float32)
        if count:
            piece[:count] = shards.read(name, key, start, count)
        pieces[key] = piece
    return pieces


def load_resharded(engine, shards: ZeroShards) -> None:
    """Collective: load ``shards`` (any world size, ZeRO-3) into ``engine`` (ZeRO-3, this world size)."""
    opt = engine.optimizer
    if shards.stage != 3 or not hasattr(opt, "fp32_partitioned_groups_flat"):
        raise CineSceneError(f"{shards.dir.parent} holds ZeRO-{shards.stage} shards of {shards.world_size} ranks: "
                             "loading at another world size needs ZeRO-3 on both sides (parallel.zero_stage=3); "
                             f"resume it at {shards.world_size} ranks")
    started = time.perf_counter()
    measured = reset_peak()
    rank = dist.get_rank(group=opt.dp_process_group)
    world = dist.get_world_size(group=opt.dp_process_group)
    flats: Dict[str, List[torch.Tensor]] = {key: [] for key in KEYS}
    steps: List[torch.Tensor] = []
    for sub, params in enumerate(opt.fp16_groups):
        pieces: Dict[str, List[torch.Tensor]] = {key: [] for key in KEYS}
        names = []
        for param in params:
            name = opt.param_names[param]
            if name not in shards.params:
                raise CineSceneError(f"{shards.dir} has no shards of {name}")
            names.append(name)
            for key, piece in _partition(shards, name, int(param.ds_numel), int(param.ds_tensor.ds_numel),
                                         rank).items():
                pieces[key].append(piece)
        expected = opt.fp32_partitioned_groups_flat[sub].numel()
        for key in KEYS:
            flat = torch.cat(pieces[key]) if pieces[key] else torch.zeros(0)
            if flat.numel() != expected:
                raise CineSceneError(f"resharding {shards.dir}: sub-group {sub} needs {expected} elements, "
                                     f"the parameters give {flat.numel()}")
            flats[key].append(flat)
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
        state[index] = {"step": steps[sub].clone(), "exp_avg": flats["exp_avg"][sub],
                        "exp_avg_sq": flats["exp_avg_sq"][sub]}
    rigid = {"loss_scaler": opt.loss_scaler, "dynamic_loss_scale": opt.dynamic_loss_scale, "overflow": False,
             "optimizer_state_dict": {"state": state, "param_groups": template["param_groups"]},
             "fp32_flat_groups": flats["fp32"]}
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
    _log.info("resharded %s from %d to %d ranks in %.2f s; peak RSS of rank %d %s%s", shards.dir.parent,
              shards.world_size, world, time.perf_counter() - started, dist.get_rank(),
              human_bytes(peak_rss_bytes()), "" if measured else " (process life-time peak)")
