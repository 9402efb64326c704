"""A random training batch at the config's sample shape (docs/CONTRACTS.md keys), for measurements.

`cinescene bench step` trains on it and the fake-tensor trace builds it
from fake tensors: the same tensors the loader would hand the trainer for
``model.data_shape``, with random values.
"""

from __future__ import annotations

from cinescene.config.schema import CineSceneConfig
from cinescene.models.flops import SampleShape, token_counts


def random_batch(cfg: CineSceneConfig, micro_batch: int, seed: int = 0) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = SampleShape.from_config(cfg)
    tokens = token_counts(cfg.model, shape)
    model, b = cfg.model, micro_batch
    frames, images = shape.latent_frames, shape.scene_images

    def normal(*size):
        return torch.randn(*size, generator=generator)

    batch = {
        "video": normal(b, model.in_dim, frames, shape.latent_height, shape.latent_width),
        "text": normal(b, model.text_len, model.text_dim),
        "cameras": torch.eye(4).expand(b, frames, 4, 4).contiguous(),
        "prompt": [""] * b,
        "key": [f"bench/{i}" for i in range(b)],
    }
    if tokens.context:
        batch["scene_images"] = torch.rand(
            b, images, 3, shape.scene_height, shape.scene_width, generator=generator
        )
        batch["scene_latents"] = normal(
            b, images, model.in_dim, shape.scene_latent_height, shape.scene_latent_width
        )
        batch["scene_cameras"] = torch.eye(4).expand(b, images, 4, 4).contiguous()
        batch["scene_counts"] = torch.full((b,), images, dtype=torch.int64)
    return batch
