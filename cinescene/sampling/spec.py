"""What a model generates: the data it was trained on (encoder, frames, size, scene images).

The training data's ``manifest.json`` (``data.train_shards`` of the
checkpoint's config) is the authority: it names the encoder that made the
latents and the text embeddings (``none``: pixel proxy and hashed words;
``wan``: the Wan VAE and umT5, with their local paths and content ids) and
the clip shape. When the manifest is not reachable from here (a checkpoint
copied to another machine), the config's counted data shape stands in
(``model.data_shape``, else ``data.synth``), with a warning.

Evaluation data must match: :func:`check_eval_data` refuses shards of another
resolution, frame count or encoder in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from cinescene.data import storage
from cinescene.data.manifest import MANIFEST, load_manifest
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("sampling")
TEMPORAL_STRIDE = 4  # Wan's causal VAE; the pixel proxy keeps frames 0, 4, 8, ...
WAN_SPATIAL_STRIDE = 8
ENCODER_IDS = ("vae_id", "text_encoder_id", "tokenizer_id")


@dataclass
class DataSpec:
    encoder: dict  # the manifest's "encoder" record ({"name": "none"} or wan ids and paths)
    frames: int  # source frames per clip
    size: tuple[int, int]  # (H, W) of the frames
    scene_images: int  # images the model conditions on at most (data.scene_images)
    scene_size: tuple[int, int]  # (Hs, Ws) of the scene images
    pixel_pool: int  # data.pixel_pool (pixel proxy's spatial stride)
    source: str  # where the facts come from (a manifest path or "config")

    @property
    def encoder_name(self) -> str:
        return self.encoder["name"]

    @property
    def spatial_stride(self) -> int:
        return WAN_SPATIAL_STRIDE if self.encoder_name == "wan" else self.pixel_pool

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // TEMPORAL_STRIDE + 1

    def latent_shape(self, channels: int) -> tuple[int, int, int, int]:
        return (
            channels,
            self.latent_frames,
            self.size[0] // self.spatial_stride,
            self.size[1] // self.spatial_stride,
        )

    @property
    def generated_frames(self) -> int:
        """Frames of a decoded video: every source frame through the VAE; every 4th for the pixel proxy."""
        return self.frames if self.encoder_name == "wan" else self.latent_frames

    @property
    def frame_stride(self) -> int:
        """Source frames per generated frame: 1 through the VAE, 4 for the pixel proxy."""
        return 1 if self.encoder_name == "wan" else TEMPORAL_STRIDE

    def video_fps(self, source_fps: float) -> float:
        """The frame rate of a generated video: the source's (``eval.fps``) over :attr:`frame_stride`."""
        return source_fps / self.frame_stride

    @property
    def camera_stride(self) -> int:
        """Generated frame index of latent (camera) frame j, divided by j."""
        return TEMPORAL_STRIDE if self.encoder_name == "wan" else 1

    def describe(self) -> str:
        return (
            f"{self.frames} frames at {self.size[0]}x{self.size[1]}, {self.encoder_name} encoder, up to "
            f"{self.scene_images} scene images of {self.scene_size[0]}x{self.scene_size[1]}"
        )

    @classmethod
    def from_manifest(cls, manifest, scene_images: int, pixel_pool: int) -> DataSpec:
        """``scene_images``, ``pixel_pool``: the data section's (data.scene_images, data.pixel_pool)."""
        data = manifest.data
        return cls(
            encoder=dict(data["encoder"]),
            frames=int(data["frames"]),
            size=tuple(data["size"]),
            scene_images=min(int(scene_images), int(data["scene_images"])),
            scene_size=tuple(data["scene_size"]),
            pixel_pool=int(pixel_pool),
            source=str(manifest.root / "manifest.json"),
        )

    @classmethod
    def from_config(cls, cfg) -> DataSpec:
        shape = cfg.model.data_shape
        size = tuple(shape.size or cfg.data.synth.size)
        return cls(
            encoder={"name": shape.encoder},
            frames=int(shape.frames or cfg.data.synth.frames),
            size=size,
            scene_images=int(shape.scene_images or cfg.data.scene_images),
            scene_size=tuple(shape.scene_size or size),
            pixel_pool=int(cfg.data.pixel_pool),
            source="config",
        )


def training_manifest(cfg):
    """The training data's manifest, or None when ``data.train_shards`` is unset or not reachable."""
    path = cfg.data.train_shards
    if not path or not storage.exists(storage.location(path) / MANIFEST):
        return None
    return load_manifest(path)


def training_spec(cfg) -> DataSpec:
    """The training data's facts, from its manifest when reachable, else from the config (warned)."""
    manifest = training_manifest(cfg)
    if manifest is not None:
        return DataSpec.from_manifest(manifest, cfg.data.scene_images, cfg.data.pixel_pool)
    spec = DataSpec.from_config(cfg)
    _log.warning(
        "training data manifest not found (data.train_shards=%s): assuming %s from the config",
        cfg.data.train_shards,
        spec.describe(),
    )
    return spec


def _encoder_identity(encoder: dict) -> dict:
    return {k: encoder.get(k) for k in ("name",) + ENCODER_IDS}


def check_eval_data(spec: DataSpec, manifest, what: str = "evaluation data") -> None:
    """Raise a one-line CineSceneError when ``manifest``'s shards do not fit the model of ``spec``."""
    other = DataSpec.from_manifest(manifest, spec.scene_images, spec.pixel_pool)
    where = manifest.root
    if (other.frames, tuple(other.size)) != (spec.frames, tuple(spec.size)):
        raise CineSceneError(
            f"{what} {where} holds {other.frames} frames at {other.size[0]}x{other.size[1]}; the "
            f"model was trained on {spec.frames} frames at {spec.size[0]}x{spec.size[1]} "
            f"({spec.source})"
        )
    mine, theirs = _encoder_identity(spec.encoder), _encoder_identity(other.encoder)
    if mine["name"] != theirs["name"] or (spec.source != "config" and mine != theirs):
        raise CineSceneError(
            f"{what} {where} was encoded with {theirs}; the model was trained on data encoded "
            f"with {mine} ({spec.source})"
        )
    if tuple(other.scene_size) != tuple(spec.scene_size):
        raise CineSceneError(
            f"{what} {where} holds scene images of {other.scene_size[0]}x{other.scene_size[1]}; "
            f"the model was trained on {spec.scene_size[0]}x{spec.scene_size[1]} ({spec.source})"
        )
    if int(manifest.data["scene_images"]) < spec.scene_images:
        raise CineSceneError(
            f"{what} {where} holds {manifest.data['scene_images']} scene images per sample; the "
            f"model uses {spec.scene_images} (data.scene_images)"
        )
