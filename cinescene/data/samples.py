"""Turn a shard sample's raw fields into the training sample of docs/CONTRACTS.md, and collate batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cinescene.errors import CineSceneError

from .manifest import Manifest
from .order import scene_count, scene_permutation
from .proxy import hashed_text, pad_text, pool, video_proxy
from .shards import SampleError, npy_field

TENSOR_KEYS = ("video", "text", "scene_images", "scene_latents", "cameras", "intrinsics", "scene_cameras")
PER_IMAGE_KEYS = ("scene_images", "scene_latents", "scene_cameras")  # axis 1 of the batch: S scene images
LIST_KEYS = ("prompt", "key")


@dataclass
class LoaderDims:
    """What the loader needs from the model config."""

    text_dim: int
    text_len: int
    channels: int | None = None  # model.in_dim; checked against the shards' latent channels

    @classmethod
    def of(cls, model_cfg_or_dims) -> LoaderDims:
        if isinstance(model_cfg_or_dims, LoaderDims):
            return model_cfg_or_dims
        if isinstance(model_cfg_or_dims, dict):
            return cls(**model_cfg_or_dims)
        return cls(
            model_cfg_or_dims.text_dim, model_cfg_or_dims.text_len, getattr(model_cfg_or_dims, "in_dim", None)
        )


class SampleDecoder:
    """Raw fields -> per-sample tensors. Checks the manifest against the model once, at construction."""

    def __init__(
        self,
        manifest: Manifest,
        scene_images: int,
        pixel_pool: int,
        dims: LoaderDims,
        seed: int,
        shuffle_scene_images: bool,
        scene_images_min: int | None = None,
    ):
        self.encoder = manifest.encoder
        self.fields = manifest.fields  # every array is checked against its shape and dtype when read
        self.pool = pixel_pool
        self.dims = dims
        self.seed = seed
        self.shuffle = shuffle_scene_images
        fields = manifest.fields
        stored = fields["scene.npy"]["shape"][0]
        where = manifest.root
        if scene_images > stored:
            raise CineSceneError(f"data.scene_images={scene_images} but the samples in {where} hold {stored}")
        self.scene_images = scene_images
        self.scene_images_min = scene_images_min  # None: every sample keeps all scene_images
        if self.encoder == "none":
            height, width = fields["video.npy"]["shape"][1:3]
            scene_h, scene_w = fields["scene.npy"]["shape"][1:3]
            if any(s % pixel_pool for s in (height, width, scene_h, scene_w)):
                raise CineSceneError(
                    f"data.pixel_pool={pixel_pool} must divide the frame size {height}x{width} "
                    f"and the scene image size {scene_h}x{scene_w} of {where}"
                )
            channels = 3
        else:
            channels = fields["latents.npy"]["shape"][0]
            text_dim = fields["text.npy"]["shape"][1]
            if text_dim != dims.text_dim:
                raise CineSceneError(
                    f"{where} holds {text_dim}-d text embeddings, model.text_dim={dims.text_dim}"
                )
        if dims.channels is not None and dims.channels != channels:
            raise CineSceneError(
                f"{where} ({self.encoder} shards) gives {channels}-channel latents, "
                f"model.in_dim={dims.channels}"
            )

    def kept_images(self, position: int, training: bool) -> int:
        """How many of the ``scene_images`` the sample at global ``position`` keeps (the rest is padding)."""
        if training and self.scene_images_min is not None:
            return scene_count(self.seed, position, self.scene_images_min, self.scene_images)
        return self.scene_images

    def _array(self, fields: dict[str, bytes], name: str) -> np.ndarray:
        return npy_field(fields, name, expected=self.fields[name])

    def decode(self, fields: dict[str, bytes], key: str, position: int, training: bool) -> dict:
        """The training sample; SampleError when any member it needs is missing, malformed, of another
        shape or dtype than the manifest says, or not finite."""
        prompt = read_prompt(fields)
        scene = self._array(fields, "scene.npy")
        if training and self.shuffle:
            pick = scene_permutation(self.seed, position, len(scene))[: self.scene_images]
        else:
            pick = np.arange(self.scene_images)
        if self.encoder == "none":
            video = video_proxy(self._array(fields, "video.npy"), self.pool)
            scene_latents = pool(scene[pick], self.pool)
            text = hashed_text(prompt, self.dims.text_dim, self.dims.text_len)
        else:
            video = self._array(fields, "latents.npy").astype(np.float32)
            scene_latents = self._array(fields, "scene_latents.npy")[pick].astype(np.float32)
            text = pad_text(self._array(fields, "text.npy").astype(np.float32), self.dims.text_len)
        sample = {
            "video": video,
            "text": text,
            "scene_images": np.moveaxis(scene[pick], -1, 1).astype(np.float32) / 255.0,
            "scene_latents": scene_latents,
            "cameras": self._array(fields, "cameras.npy").astype(np.float32),
            "intrinsics": self._array(fields, "intrinsics.npy").astype(np.float32),
            "scene_cameras": self._array(fields, "scene_cameras.npy")[pick].astype(np.float32),
            "prompt": prompt,
            "key": key,
        }
        count = self.kept_images(position, training)
        for name in PER_IMAGE_KEYS:  # fixed length S so batches stack; the model never attends the padding
            sample[name][count:] = 0
        sample["scene_count"] = count
        bad = [k for k in TENSOR_KEYS if not np.isfinite(sample[k]).all()]
        if bad:
            raise SampleError(f"non-finite values in {', '.join(bad)}")
        return sample


def read_prompt(fields: dict[str, bytes]) -> str:
    try:
        return fields["prompt.txt"].decode("utf-8").strip()
    except (KeyError, UnicodeDecodeError):
        raise SampleError("missing or undecodable prompt.txt") from None


def check_sample(fields: dict[str, bytes], manifest: Manifest) -> None:
    """Raise SampleError unless every array member the manifest describes (optional ones when present)
    parses with the manifest's shape and dtype and holds finite numbers, and the prompt is UTF-8 text.
    What `data inspect --verify` checks per sample: everything the loader reads, and the rest."""
    read_prompt(fields)
    for name, desc in sorted(manifest.fields.items()):
        array = npy_field(fields, name, optional=desc["count"] < manifest.num_samples, expected=desc)
        if array is not None and array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise SampleError(f"non-finite values in {name}")


def collate(samples: list[dict]) -> dict:
    """Stack per-sample arrays into batch-first float32 tensors
    (scene counts int64); prompts and keys stay lists."""
    batch = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in TENSOR_KEYS}
    batch["scene_counts"] = torch.tensor([s["scene_count"] for s in samples], dtype=torch.int64)
    batch.update({k: [s[k] for s in samples] for k in LIST_KEYS})
    return batch
