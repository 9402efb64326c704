"""One training step of the real model at its real size, traced on the CPU with fake tensors (`plan --trace`).

Nothing here measures memory by itself: torch's own tools do. The model is
built on the meta device and given fake parameters
(``torch._subclasses.FakeTensorMode``: shapes and dtypes, no storage), sharded
like ZeRO-3 by torch's FSDP2 (``fully_shard``) over a fake process group of
the plan's GPU count (torch's ``fake`` backend; its collectives are
``torch.distributed._tools.fake_collectives``), and run for one step (forward
with the config's activation checkpointing, backward, AdamW) under
``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker``, which tracks
every tensor storage by category and keeps the peak. It runs as rank 0 of the
fake group; every rank holds the same.

How the traced engine differs from DeepSpeed's, and what is done about it:

* FSDP2 keeps fp32 parameter shards, fp32 gradient shards and Adam's moments
  (16 bytes per trained parameter and GPU); DeepSpeed keeps a compute-dtype
  partition, a compute-dtype gradient partition, fp32 master weights and the
  moments, also 16 (its estimator, and the plan, count 18: cinescene.plan.memory).
* The steady state of training is traced: the optimizer's moments exist and the
  gradient shards are allocated before the step (as under accumulation, and as
  DeepSpeed allocates its gradient partition at start-up).
* Our own EMA (``train.ema``) is one fp32 tensor per parameter slice
  (cinescene.train.ema); a tensor of that size joins each parameter's optimizer
  state (AdamW ignores it), so the tracker counts it with the optimizer states.
* FSDP2 gathers a whole block and prefetches the next; DeepSpeed gathers per
  module within its buckets and keeps the last blocks gathered into the backward.
* Attention runs as torch SDPA (its flash kernel on the CPU); on a GPU the fused
  kernel saves the same (output and log-sum-exp).
* MemTracker's per-module peaks cost O(operations x modules); only the global
  peak is needed, so ``_update_peak_stats`` keeps just that part.

The flow-matching objective (cinescene.train.objective) draws per-sample
randomness whose branches depend on values, which fake tensors do not have; the
traced step builds the same tensors (noise, noised input, target) and the same
loss without branching.
"""

from __future__ import annotations

import math
import time
import types
from dataclasses import dataclass

from cinescene.config.schema import CineSceneConfig
from cinescene.errors import CineSceneError

# FSDPMemTracker's categories, grouped the way the plan reports them.
ACTIVATION_KINDS = ("Activation", "Temp", "Inputs")
TOTAL_KEY = "Total"


@dataclass(frozen=True)
class TraceResult:
    gpus: int
    peak_bytes: int  # everything on the rank at the step's peak
    activation_bytes: int  # activations, backward temporaries and the inputs at that moment
    categories: dict[str, int]  # FSDPMemTracker's breakdown at the peak
    seconds: float

    def as_dict(self) -> dict:
        return {
            "gpus": self.gpus,
            "peak_bytes": self.peak_bytes,
            "activation_bytes": self.activation_bytes,
            "categories": dict(self.categories),
            "seconds": self.seconds,
        }


def _global_peak_only(tracker, peak_state) -> None:
    """MemTracker._update_peak_stats without its per-module bookkeeping (see the module doc)."""
    for device, snapshot in tracker._curr_mem_snap.items():
        if tracker._peak_mem.get(device, 0) < snapshot[TOTAL_KEY]:
            tracker._peak_mem[device] = snapshot[TOTAL_KEY]
            tracker._peak_mem_snap[device] = dict(snapshot)


def _fake_parameters(model, trainable_dtype, frozen_dtype) -> None:
    """Replace the meta-device parameters and buffers by fake CPU tensors of the same shapes."""
    import torch
    import torch.nn as nn

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                dtype = trainable_dtype if param.requires_grad else frozen_dtype
                module._parameters[name] = nn.Parameter(
                    torch.empty(param.shape, dtype=dtype), requires_grad=param.requires_grad
                )
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)


def _shard(model, mesh, compute_dtype) -> None:
    """FSDP2 units as ZeRO-3 would gather them: each DiT block, each VGGT block, the rest at the root."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    encoder = getattr(getattr(model, "scene_encoder", None), "vggt", None)
    if encoder is not None:
        aggregator = encoder.aggregator
        trains = any(p.requires_grad for p in aggregator.parameters())
        frozen_policy = policy if trains else MixedPrecisionPolicy(param_dtype=compute_dtype)
        blocks = [*aggregator.frame_blocks, *aggregator.global_blocks, *aggregator.patch_embed.blocks]
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=frozen_policy)
        fully_shard(aggregator, mesh=mesh, mp_policy=frozen_policy)  # called as a module by VGGT.features
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def _inputs(cfg: CineSceneConfig, micro_batch: int) -> dict:
    """The model's inputs from a random batch (fake tensors), as the flow-matching objective passes them:
    the scene inputs the config's model reads; every image real (no ``scene_counts``: reading them needs
    values)."""
    from .batch import random_batch

    batch = random_batch(cfg, micro_batch)
    scene = cfg.model.scene
    wanted = {
        "video": True,
        "text": True,
        "cameras": True,
        "scene_images": scene.enabled and scene.vggt_tokens,
        "scene_latents": scene.enabled and scene.pixel_context,
        "scene_cameras": scene.enabled and scene.pose_embedding,
    }
    return {key: batch[key] for key, use in wanted.items() if use and key in batch}


def trace_step(cfg: CineSceneConfig, gpus: int) -> TraceResult:
    """Trace one optimizer step of ``cfg``'s model on rank 0 of ``gpus`` (see the module doc)."""
    import torch
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from cinescene.models import build_model

    if cfg.parallel.sequence != 1:
        raise CineSceneError(
            "the trace runs one rank without sequence parallelism; set parallel.sequence=1 to trace"
        )
    started = time.perf_counter()
    compute = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32
    if dist.is_initialized():
        raise CineSceneError("the trace needs a process of its own (a process group is already running)")
    dist.init_process_group("fake", rank=0, world_size=gpus, store=FakeStore())
    try:
        mesh = init_device_mesh("cpu", (gpus,))  # outside the fake mode: the mesh reads real values
        model = build_model(cfg.model, device="meta")
        with FakeTensorMode():
            _fake_parameters(model, torch.float32, compute)
            _shard(model, mesh, compute)
            trained = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trained, lr=cfg.train.lr)
            for param in trained:  # steady state: moments exist, gradient shards allocated
                param.grad = torch.zeros_like(param)
            optimizer.step()
            for param in trained if cfg.train.ema.enabled else ():
                optimizer.state[param]["ema"] = torch.empty(math.ceil(param.numel() / gpus))
            batch = _inputs(cfg, cfg.train.micro_batch_size)
            tracker = FSDPMemTracker(model, optimizer)
            tracker._update_peak_stats = types.MethodType(_global_peak_only, tracker)
            tracker.track_inputs(tuple(batch.values()))
            with tracker:
                x0 = batch.pop("video")
                noise = torch.randn_like(x0)
                sigma = torch.rand(x0.shape[0])
                x_t = (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
                prediction = model(x_t, sigma * 1000, batch.pop("text"), **batch)
                loss = (prediction - (noise - x0)).pow(2).mean()
                loss.backward()
                optimizer.step()
            peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    finally:
        dist.destroy_process_group()
    categories = {str(getattr(k, "value", k)): int(v) for k, v in peak.items()}
    return TraceResult(
        gpus=gpus,
        peak_bytes=categories[TOTAL_KEY],
        activation_bytes=sum(categories.get(kind, 0) for kind in ACTIVATION_KINDS),
        categories={k: v for k, v in categories.items() if k != TOTAL_KEY},
        seconds=time.perf_counter() - started,
    )
