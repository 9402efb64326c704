"""Conditioning inputs for sampling: scene images from
a folder or a shard sample, and a sample's other fields.

A scene folder holds image files (PNG, JPEG, WebP, BMP; sorted by name);
each is centre-cropped to the training scene images' aspect and resized
(bilinear) to their size, the size the model's VGGT preprocessing starts
from. Any number from 1 to the model's ``data.scene_images`` works.

``SHARDS:KEY`` names one sample of prepared shards (a directory with
``manifest.json``); :class:`ShardSamples` reads it through the loader's own
decoder, so the model gets exactly what evaluation gives it: its first
``data.scene_images`` scene images unshuffled (with their cameras, which a
model with scene anchoring needs), its prompt embedding, its cameras, and
(for metrics) the frames with and without the subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cinescene.config.paths import kind_problem
from cinescene.data.manifest import load_manifest
from cinescene.data.samples import LoaderDims, SampleDecoder
from cinescene.data.shards import SampleError, ShardReader, npy_field
from cinescene.errors import CineSceneError

from .spec import DataSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_scene_folder(folder: str | Path, spec: DataSpec) -> tuple[np.ndarray, list[str]]:
    """uint8 (S, Hs, Ws, 3) scene images from ``folder`` and their file names."""
    folder = Path(folder)
    problem = kind_problem(folder, "directory")
    if problem is not None:
        raise CineSceneError(f"scene folder {folder} {problem}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CineSceneError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) > spec.scene_images:
        raise CineSceneError(
            f"{folder} holds {len(files)} images; the model takes 1 to {spec.scene_images} "
            "(data.scene_images)"
        )
    height, width = spec.scene_size
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                images.append(np.asarray(ImageOps.fit(image, (width, height), Image.BILINEAR)))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise CineSceneError(f"{path}: not a readable image ({str(exc).splitlines()[0]})") from None
    return np.stack(images), [p.name for p in files]


def parse_shard_ref(text: str) -> tuple[str, str] | None:
    """``SHARDS:KEY`` -> (shards, key) when SHARDS is a shard directory; None for anything else."""
    shards, sep, key = text.rpartition(":")
    if sep and key and (Path(shards) / "manifest.json").is_file():
        return shards, key
    return None


@dataclass
class ShardSample:
    key: str
    index: int  # position in manifest order
    prompt: str
    text: np.ndarray  # (text_len, text_dim) float32, as the loader decodes it
    scene: np.ndarray  # (S, Hs, Ws, 3) uint8, the images the model gets
    scene_latents: np.ndarray  # (S, C, h, w) float32
    cameras: np.ndarray  # (T, 4, 4) camera-to-world per latent frame
    scene_cameras: np.ndarray  # (S, 4, 4) camera-to-world of the scene images (scene anchoring)
    intrinsics: np.ndarray  # (T, 3, 3) pixel intrinsics of the frames
    video: np.ndarray | None  # (F, H, W, 3) uint8 ground truth, when the shards keep pixels
    video_bg: np.ndarray | None  # the same without the subject (scene-decoupled data)


class ShardSamples:
    """Random access to the samples of one shard directory, decoded for a model of ``spec``."""

    def __init__(self, root: str | Path, spec: DataSpec, model_cfg):
        self.manifest = load_manifest(root)
        self.refs = self.manifest.samples()
        self.decoder = SampleDecoder(
            self.manifest,
            spec.scene_images,
            spec.pixel_pool,
            LoaderDims.of(model_cfg),
            seed=0,
            shuffle_scene_images=False,
        )
        self.reader = ShardReader()
        self.spec = spec

    def __len__(self) -> int:
        return len(self.refs)

    def index_of(self, key: str) -> int:
        for index, ref in enumerate(self.refs):
            if ref.key == key:
                return index
        examples = ", ".join(ref.key for ref in self.refs[:3])
        raise CineSceneError(
            f"no sample {key!r} in {self.manifest.root} ({len(self.refs)} samples, e.g. {examples})"
        )

    def identity(self, index: int) -> tuple[int, int]:
        """(crc32, length) of the sample's bytes: equal for the same sample in any shard directory."""
        ref = self.refs[index]
        return ref.crc, ref.length

    def read(self, index: int) -> ShardSample:
        ref = self.refs[index]
        try:
            fields = self.reader.read(ref.shard, ref.key, ref.offset, ref.length, ref.crc)
            decoded = self.decoder.decode(fields, ref.key, index, training=False)
            video = npy_field(fields, "video.npy", optional=True)
            video_bg = npy_field(fields, "video_bg.npy", optional=True)
        except SampleError as exc:
            raise CineSceneError(f"sample {ref.key} in {ref.shard.name} is unreadable: {exc}") from None
        scene = np.moveaxis(decoded["scene_images"] * 255.0, 1, -1).round().astype(np.uint8)
        return ShardSample(
            key=ref.key,
            index=index,
            prompt=decoded["prompt"],
            text=decoded["text"],
            scene=scene,
            scene_latents=decoded["scene_latents"],
            cameras=decoded["cameras"],
            scene_cameras=decoded["scene_cameras"],
            intrinsics=decoded["intrinsics"],
            video=video,
            video_bg=video_bg,
        )
