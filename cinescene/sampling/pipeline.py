"""Conditioning in, decoded frames out: the model, the sampler and the codec put together.

:class:`VideoGenerator` is what `cinescene sample`, `cinescene eval` and the
training eval hook share. Noise is drawn on the CPU from a generator seeded
by (seed, sample key), so a video depends neither on the device nor on the
number of ranks or the order in which a rank meets its samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from cinescene.errors import CineSceneError
from cinescene.log import console, progress_bars_shown
from cinescene.models.context_cache import check_cacheable

from .sampler import sample
from .spec import DataSpec


def noise_generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


@dataclass
class Settings:
    steps: int
    guidance_scale: float
    shift: float
    seed: int


class StepBar:
    """A progress bar over sampling steps when
    :func:`cinescene.log.progress_bars_shown`; otherwise nothing."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = None
        if enabled and progress_bars_shown():
            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, file=console())

    def update(self, *_args) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class VideoGenerator:
    def __init__(self, model, spec: DataSpec, codec, device):
        self.model, self.spec, self.codec = model, spec, codec
        self.device = torch.device(device)

    def context_cache(self) -> str:
        """Whether the sampler will use the context K/V cache ("on"), or why not."""
        try:
            check_cacheable(self.model)
        except CineSceneError as exc:
            return "off: " + str(exc).split(": ", 1)[-1]
        return "on"

    def latents(
        self,
        text: np.ndarray,
        cameras: np.ndarray,
        scene: np.ndarray | None,
        settings: Settings,
        key: str,
        negative_text: np.ndarray | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        scene_cameras: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Denoised latents (C, T, h, w) for one sample; ``scene`` uint8 (S, Hs, Ws, 3) or None.

        ``scene_cameras`` (S, 4, 4): the scene images' camera-to-world in the world of ``cameras``; a model
        with scene anchoring (``model.scene.pose_embedding``) requires them, other models ignore them."""
        cfg = self.model.cfg
        shape = (1,) + self.spec.latent_shape(cfg.in_dim)
        noise = torch.randn(shape, generator=noise_generator(settings.seed, key)).to(self.device)
        on = dict(device=self.device, dtype=torch.float32)  # the model casts to its compute dtype
        conditioning = {"cameras": torch.as_tensor(cameras, dtype=torch.float32)[None].to(self.device)}
        if scene is not None and cfg.scene.enabled:
            if cfg.scene.vggt_tokens:
                images = torch.from_numpy(np.ascontiguousarray(scene)).permute(0, 3, 1, 2)[None]
                conditioning["scene_images"] = (images.float() / 255.0).to(**on)
            if cfg.scene.pixel_context:
                conditioning["scene_latents"] = torch.as_tensor(self.codec.encode_scene(scene))[None].to(**on)
            if cfg.scene.pose_embedding:
                if scene_cameras is None or len(scene_cameras) != len(scene):
                    raise CineSceneError(
                        f"the model anchors the scene to the camera (model.scene.pose_embedding): "
                        f"it needs one camera per scene image ({len(scene)}), got "
                        f"{'none' if scene_cameras is None else len(scene_cameras)}"
                    )
                conditioning["scene_cameras"] = torch.as_tensor(scene_cameras, dtype=torch.float32)[None].to(
                    self.device
                )
        negative = None if negative_text is None else torch.as_tensor(negative_text)[None].to(**on)
        x = sample(
            self.model,
            noise,
            torch.as_tensor(text)[None].to(**on),
            steps=settings.steps,
            shift=settings.shift,
            guidance_scale=settings.guidance_scale,
            negative_text=negative,
            callback=callback,
            **conditioning,
        )
        return x[0]

    def video(self, *args, **kwargs) -> np.ndarray:
        """uint8 frames (N, H, W, 3): :meth:`latents` decoded by the codec."""
        return self.codec.decode(self.latents(*args, **kwargs))
