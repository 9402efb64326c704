"""Inference context K/V cache: compute the scene context once per sample, reuse it at every denoising step.

Why it is exact. With clean context (``model.scene.timestep = "clean"``: the
context runs at t = 0 whatever the video's timestep) and the
context-readonly mask (context queries see only context keys), nothing a
context token computes depends on the video tokens or on the denoising step:
its adaLN parameters come from t = 0, its self-attention sees only context,
its cross-attention sees the (fixed) prompt, it gets no per-frame camera
term (the scene pose embedding, when on, is added to the context tokens once,
from the fixed scene and first-frame cameras). So the context keys and values
every layer's self-attention receives are the same at every step, and the
video tokens are the only ones that need running.

How. The first call of a :class:`ContextKVCache` runs the ordinary forward
over [video ++ context] and records, in each block, the context part of the
keys and values handed to self-attention (after q/k RMSNorm and RoPE). Later
calls run the model without scene inputs, i.e. over the video tokens only,
and each block's self-attention gets the cached context keys and values
appended to its own. Video tokens see exactly what they saw before:
[their keys ++ context keys], same positions, same values.

Implemented with forward pre-hooks on each block's ``self_attn`` (they swap
the ``attend`` function the block passes in), so the model itself needs no
cache-specific code. One cache holds one conditioning: the prompt changes the
context through cross-attention, so classifier-free guidance keeps one cache
per branch.

Memory: 2 (keys and values) x layers x context tokens x dim values per sample
and guidance branch. At 31,200 context tokens (20 scene images) in bf16:
1.3B (30 layers, dim 1536) 5.75 GB per branch, 11.5 GB with guidance's two
branches; 14B (40 layers, dim 5120) 25.6 GB per branch, 51.1 GB with guidance,
which next to the 28.6 GB of bf16 14B weights does not fit an 80 GB GPU.
Before the first layer's keys are stored, the cache checks that all of it (and
the caches of the other branches still to come, ``planned_copies``) fits the
device's free memory and raises a one-line CineSceneError otherwise, instead
of running out of memory part-way through the forward.

Offload (``offload=True``). The keys and values then live in host memory
(pinned, so copies run asynchronously) and each later step streams them in
one layer at a time: layer i+1's copy is issued on a side CUDA stream while
layer i computes, so the device holds at most two layers' context K/V. The
14B-with-guidance case above then needs 51 GB of host memory and about
1.3 GB of device memory; the price is 2 x 25.6 GB of host-to-device traffic
per step, which hides behind compute when a branch's forward takes longer
than its copies: an estimate, not a measurement, is 0.5 s of copies per branch
at 50 GB/s against about 4 s of 14B compute (2.6 PFLOP of video-token
forward at 600 TFLOP/s). The host check reads the kernel's MemAvailable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from cinescene import host_memory
from cinescene.errors import CineSceneError

from .attention import attention
from .packing import TokenPacking

GB = 1e9


def check_cacheable(model) -> None:
    """Raise CineSceneError unless the context of ``model`` is step-independent (clean and read-only)."""
    cfg = model.cfg
    problems = []
    if not (cfg.scene.enabled and hasattr(model, "scene_encoder")):
        problems.append("the model has no scene context (model.scene.enabled=false)")
    if cfg.attention.mask != "context_readonly":
        problems.append(
            f"model.attention.mask is {cfg.attention.mask!r}: context tokens would see the video "
            "(set model.attention.mask=context_readonly)"
        )
    if cfg.scene.timestep != "clean":
        problems.append(
            f"model.scene.timestep is {cfg.scene.timestep!r}: the context would change with the "
            "denoising step (set model.scene.timestep=clean)"
        )
    if getattr(model, "sequence_group", None) is not None:
        problems.append("sequence parallelism is on (the cache keeps whole, unsharded sequences)")
    if problems:
        raise CineSceneError("the context K/V cache cannot be used: " + "; ".join(problems))


def available_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation may take on ``device``: the driver's free memory plus what torch's caching
    allocator holds unused. None off CUDA (host memory is not checked: CPU runs are tiny)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


class ContextKVCache:
    """Per-layer context keys/values of one conditioning of one batch; filled by its first forward.

    ``planned_copies``: how many caches of this size the caller will fill from
    now on, this one included (a sampler with guidance: 2 for the first
    branch's cache, 1 for the second's), so the memory check fails before any
    of them has taken memory. ``offload``: keep the keys and values in host
    memory and stream them in per layer (see the module doc).
    """

    def __init__(self, planned_copies: int = 1, offload: bool = False) -> None:
        if planned_copies < 1:
            raise ValueError(f"planned_copies must be >= 1, got {planned_copies}")
        self.offload = offload
        self._stream: _LayerStream | None = None
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.num_video: int | None = None
        # The first call's packing of [video ++ context] when its samples hold different numbers of
        # scene images; later calls' keys (video ++ cached context) have the same positions.
        self.packing: TokenPacking | None = None
        self.planned_copies = planned_copies
        self._backend = "auto"
        self._layers = 0

    @property
    def filled(self) -> bool:
        return self.num_video is not None

    def clear(self) -> None:
        self.keys, self.values, self.num_video, self.packing = [], [], None, None
        self._stream = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    @torch.no_grad()
    def forward(
        self,
        model,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        *,
        cameras: torch.Tensor | None = None,
        scene_images: torch.Tensor | None = None,
        scene_latents: torch.Tensor | None = None,
        scene_tokens: torch.Tensor | None = None,
        drop_scene: torch.Tensor | None = None,
        scene_counts: torch.Tensor | None = None,
        scene_cameras: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``model(x, timestep, text, ...)`` with the context computed on the first call only.

        The first call needs the scene inputs (as ``model.forward`` takes them)
        and returns the ordinary output; later calls ignore them. ``text`` must
        stay the same across calls (it shaped the cached context).
        """
        if self.filled:
            if _video_tokens(model, x) != self.num_video:
                raise ValueError(
                    f"the cache was filled for {self.num_video} video tokens, x has {_video_tokens(model, x)}"
                )
            self._backend = model.cfg.attention.backend
            if self.offload:
                self._stream = _LayerStream(self.keys, self.values, x.device)
            with _swap_self_attention(model, self._reader):
                return model(x, timestep, text, cameras=cameras)
        check_cacheable(model)
        if all(v is None for v in (scene_images, scene_latents, scene_tokens)):
            raise ValueError("the first call of a context cache needs the scene inputs")
        self.num_video = _video_tokens(model, x)
        self._layers = len(model.blocks)
        try:
            with _swap_self_attention(model, self._recorder):
                out = model(
                    x,
                    timestep,
                    text,
                    cameras=cameras,
                    scene_images=scene_images,
                    scene_latents=scene_latents,
                    scene_tokens=scene_tokens,
                    drop_scene=drop_scene,
                    scene_counts=scene_counts,
                    scene_cameras=scene_cameras,
                )
        except BaseException:
            self.clear()
            raise
        if len(self.keys) != len(model.blocks):
            self.clear()
            raise RuntimeError(
                "the context cache saw a self-attention call per block missing; was the model "
                "run with activation checkpointing under grad?"
            )
        return out

    def _recorder(self, layer: int, attend: Callable) -> Callable:
        def record(q, k, v):
            if not self.keys:
                self._check_fits(k[:, self.num_video :])
                self.packing = getattr(attend, "packing", None)
            # Copies, not views: a view would keep the whole (video ++ context) tensor alive.
            self.keys.append(self._store(k[:, self.num_video :]))
            self.values.append(self._store(v[:, self.num_video :]))
            return attend(q, k, v)

        return record

    def _store(self, t: torch.Tensor) -> torch.Tensor:
        if not self.offload:
            return t.clone()
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
        # Synchronous: the host copy must be complete before the first step reads it back.
        return host.copy_(t)

    def _check_fits(self, context_keys: torch.Tensor) -> None:
        """Raise CineSceneError when every layer's keys and values (times ``planned_copies``) cannot fit:
        in device memory, or with ``offload`` in host memory (the device then holds two layers at a time)."""
        batch, tokens, heads, head_dim = context_keys.shape
        layer_bytes = 2 * context_keys.numel() * context_keys.element_size()
        need = self.planned_copies * self._layers * layer_bytes
        dtype = str(context_keys.dtype).replace("torch.", "")
        what = (
            f"{need / GB:.1f} GB ({self.planned_copies} cache(s) x 2 x {self._layers} layers x {batch} x "
            f"{tokens:,} context tokens x {heads * head_dim} x {dtype})"
        )
        if self.offload:
            host = host_memory.available_bytes()
            if host is not None and need > host:
                raise CineSceneError(
                    f"the offloaded context K/V cache needs {what} of host memory but "
                    f"{host / GB:.1f} GB is available; sample without it (context_cache=False)"
                )
            need, what = 2 * layer_bytes, f"{2 * layer_bytes / GB:.2f} GB (two layers in flight)"
        available = available_bytes(context_keys.device)
        if available is not None and need > available:
            hint = "" if self.offload else ", keep it in host memory (context_cache_offload=True)"
            raise CineSceneError(
                f"the context K/V cache needs {what} but {context_keys.device} has "
                f"{available / GB:.1f} GB free; sample without it (context_cache=False){hint}"
            )

    def _reader(self, layer: int, attend: Callable) -> Callable:
        backend, packing = self._backend, self.packing

        def attend_with_context(q, k, v):
            if self._stream is not None:
                context_k, context_v = self._stream.fetch(layer)
            else:
                context_k, context_v = self.keys[layer], self.values[layer]
            # Video queries see every key: the readonly mask never restricts them. Lq != Lk here,
            # but it is self-attention over the extended sequence (so ``auto`` may pick the fused kernel).
            # With a packing, the video queries are its prefix and padded context keys stay unseen.
            return attention(
                q,
                torch.cat([k, context_k], dim=1),
                torch.cat([v, context_v], dim=1),
                backend=backend,
                kind="self",
                packing=packing,
            )

        return attend_with_context


class _LayerStream:
    """Host-resident per-layer tensors brought to ``device`` in layer order, the next one copied ahead."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], device: torch.device):
        self.keys, self.values, self.device = keys, values, device
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.in_flight: dict[int, tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None]] = {}
        if keys:  # the first layer's copy overlaps the embeddings that run before it
            self._issue(0)

    def fetch(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.in_flight:
            self._issue(layer)
        k, v, ready = self.in_flight.pop(layer)
        if ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            # Allocated on the copy stream, used on this one: keep the memory until this stream is done.
            k.record_stream(current)
            v.record_stream(current)
        if layer + 1 < len(self.keys):
            self._issue(layer + 1)
        return k, v

    def _issue(self, layer: int) -> None:
        if self.copy_stream is None:
            self.in_flight[layer] = (
                self.keys[layer].to(self.device),
                self.values[layer].to(self.device),
                None,
            )
            return
        with torch.cuda.stream(self.copy_stream):
            k = self.keys[layer].to(self.device, non_blocking=True)
            v = self.values[layer].to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        self.in_flight[layer] = (k, v, ready)


def _video_tokens(model, x: torch.Tensor) -> int:
    return math.prod(size // patch for size, patch in zip(x.shape[2:], model.patch_size))


@contextmanager
def _swap_self_attention(model, make_attend: Callable) -> Iterator[None]:
    """While active, each block's ``self_attn(hidden, attend,
    rope=...)`` gets ``make_attend(layer, attend)``."""
    handles = []
    for layer, block in enumerate(model.blocks):

        def pre_hook(module, args, kwargs, layer=layer):
            hidden, attend = args[0], args[1]
            return (hidden, make_attend(layer, attend)) + tuple(args[2:]), kwargs

        handles.append(block.self_attn.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
