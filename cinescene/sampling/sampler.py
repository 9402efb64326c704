"""Euler flow-matching sampler with classifier-free guidance and the inference context cache.

Per step: the model predicts the velocity v = eps - x0 for each guidance
branch (the prompt; the negative prompt), they combine as
``v_uncond + g * (v_cond - v_uncond)``, and ``x += (sigma_next - sigma) * v``.
The scene is encoded once per call (VGGT features); with the context cache
(:mod:`cinescene.models.context_cache`), each branch also computes its
context tokens' keys and values once, in its first step, and every later
step runs the DiT over the video tokens only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cinescene.errors import CineSceneError
from cinescene.models.cinescene_model import scene_count_list
from cinescene.models.context_cache import ContextKVCache, check_cacheable

from .schedule import sampling_sigmas


def _wants_cache(model, context_cache: bool | None, has_scene: bool) -> bool:
    """None: use the cache when it is exact for this model; True: require it; False: off."""
    if context_cache is False or (context_cache is None and not has_scene):
        return False
    if context_cache is None:
        try:
            check_cacheable(model)
        except CineSceneError:
            return False
        return True
    if not has_scene:
        raise CineSceneError("context_cache=True needs scene inputs (there is no context to cache)")
    check_cacheable(model)
    return True


@torch.no_grad()
def sample(
    model,
    noise: torch.Tensor,
    text: torch.Tensor,
    *,
    steps: int = 50,
    shift: float = 15.0,
    guidance_scale: float = 5.0,
    negative_text: torch.Tensor | None = None,
    cameras: torch.Tensor | None = None,
    scene_images: torch.Tensor | None = None,
    scene_latents: torch.Tensor | None = None,
    scene_tokens: torch.Tensor | None = None,
    scene_counts: torch.Tensor | None = None,
    scene_cameras: torch.Tensor | None = None,
    drop_scene_unconditional: bool = False,
    context_cache: bool | None = None,
    context_cache_offload: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` (B, C, T, H, W) into video latents (fp32, same shape).

    ``text`` / ``negative_text`` (B, L, text_dim) embeddings (the negative
    defaults to zeros: Wan's empty-prompt embedding is the caller's to pass);
    ``guidance_scale`` 1 runs the conditional branch alone.
    ``scene_counts`` (B,): real scene images per sample, the rest padding.
    ``scene_cameras`` (B, S, 4, 4): the scene images' cameras, for ``model.scene.pose_embedding``.
    ``drop_scene_unconditional`` also drops the scene in the unconditional branch.
    ``context_cache``: None uses it when exact (clean context, readonly mask),
    True requires it, False turns it off; ``context_cache_offload`` keeps the cached
    keys/values in host memory and streams them in per layer (for caches the
    device cannot hold). ``callback(step, x)`` after each step.
    """
    has_scene = any(v is not None for v in (scene_images, scene_latents, scene_tokens))
    use_cache = _wants_cache(model, context_cache, has_scene)
    if has_scene and scene_tokens is None and scene_images is not None and model.cfg.scene.vggt_tokens:
        counts = scene_count_list(scene_counts, noise.shape[0], scene_images.shape[1])
        scene_tokens = model.scene_encoder.extract_features(scene_images, counts)  # VGGT once, not per step
    scene = (
        dict(
            scene_latents=scene_latents,
            scene_tokens=scene_tokens,
            scene_counts=scene_counts,
            scene_cameras=scene_cameras,
        )
        if has_scene
        else {}
    )

    branches = [dict(text=text, drop_scene=None)]
    if guidance_scale != 1.0:
        negative = torch.zeros_like(text) if negative_text is None else negative_text
        drop = (
            torch.ones(noise.shape[0], dtype=torch.bool, device=noise.device)
            if (drop_scene_unconditional and has_scene)
            else None
        )
        branches.append(dict(text=negative, drop_scene=drop))
    # Each cache's memory check also counts the caches of the branches after it.
    caches: list[ContextKVCache | None] = [
        ContextKVCache(planned_copies=len(branches) - i, offload=context_cache_offload) if use_cache else None
        for i in range(len(branches))
    ]

    sigmas = sampling_sigmas(steps, shift)
    x = noise.float()
    for step in range(steps):
        sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
        timestep = torch.full((x.shape[0],), sigma * 1000.0, device=x.device)
        velocities = []
        for branch, cache in zip(branches, caches):
            if cache is not None:
                v = cache.forward(
                    model,
                    x,
                    timestep,
                    branch["text"],
                    cameras=cameras,
                    drop_scene=branch["drop_scene"],
                    **scene,
                )
            elif has_scene:
                v = model(
                    x, timestep, branch["text"], cameras=cameras, drop_scene=branch["drop_scene"], **scene
                )
            else:
                v = model(x, timestep, branch["text"], cameras=cameras)
            velocities.append(v.float())
        velocity = (
            velocities[0]
            if len(velocities) == 1
            else (velocities[1] + guidance_scale * (velocities[0] - velocities[1]))
        )
        x = x + (sigma_next - sigma) * velocity
        if callback is not None:
            callback(step, x)
    return x
