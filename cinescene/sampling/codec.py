"""The encoders around the DiT at inference: prompt -> embedding, scene images -> latents, latents -> frames.

Whatever made the training data makes the inputs here (the manifest's
``encoder``, :class:`cinescene.sampling.spec.DataSpec`):

* ``none`` (:class:`PixelProxyCodec`): the hashed word embedding of
  :mod:`cinescene.data.proxy`; generated "latents" are the pixel proxy (every
  4th frame, average-pooled by ``data.pixel_pool``), decoded by bilinear
  upsampling back to the frame size.
* ``wan`` (:class:`WanCodec`): umT5 and the Wan VAE from local directories
  (by default the paths the manifest recorded; ``--vae``/``--text-encoder``
  override them), decoding all 4(T-1)+1 frames.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cinescene.data.encoders import WanEncoder
from cinescene.data.proxy import hashed_text, pad_text, pool

from .spec import DataSpec


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, N, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return (
        ((video.float().clamp(-1, 1).permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    )


class PixelProxyCodec:
    name = "none"

    def __init__(self, spec: DataSpec, text_dim: int, text_len: int):
        self.spec, self.text_dim, self.text_len = spec, text_dim, text_len

    def encode_text(self, prompt: str) -> np.ndarray:
        return hashed_text(prompt, self.text_dim, self.text_len)

    def encode_scene(self, images: np.ndarray) -> np.ndarray:
        """uint8 (S, Hs, Ws, 3) -> (S, 3, Hs/p, Ws/p) in [-1, 1]."""
        return pool(images, self.spec.pixel_pool)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(3, T, h, w) -> uint8 (T, H, W, 3), bilinear upsampling to the clip's frame size."""
        frames = latents.float().permute(1, 0, 2, 3)  # (T, 3, h, w)
        frames = F.interpolate(frames, size=tuple(self.spec.size), mode="bilinear", align_corners=False)
        return to_uint8(frames.permute(1, 0, 2, 3))


class WanCodec:
    name = "wan"

    def __init__(
        self,
        spec: DataSpec,
        text_len: int,
        vae: str | None = None,
        text_encoder: str | None = None,
        tokenizer: str | None = None,
        device: str = "cpu",
    ):
        recorded = spec.encoder
        self.text_len = text_len
        self.encoder = WanEncoder(
            vae or recorded.get("vae"),
            text_encoder or recorded.get("text_encoder"),
            tokenizer or recorded.get("tokenizer"),
            device=device,
            dtype="float32",
        )

    def encode_text(self, prompt: str) -> np.ndarray:
        return pad_text(self.encoder.encode_text(prompt), self.text_len)

    def encode_scene(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.encode_images(images)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return self.encoder.decode_latents(latents.float().cpu())


def build_codec(
    spec: DataSpec,
    model_cfg,
    *,
    vae: str | None = None,
    text_encoder: str | None = None,
    tokenizer: str | None = None,
    device: str = "cpu",
):
    if spec.encoder_name == "wan":
        return WanCodec(spec, model_cfg.text_len, vae, text_encoder, tokenizer, device)
    return PixelProxyCodec(spec, model_cfg.text_dim, model_cfg.text_len)
