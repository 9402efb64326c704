"""Training data: shard locations, loader behaviour, and on-the-fly synthetic data.

What the loader does with these settings is documented in
``cinescene/data/loader.py`` (cursor, resume, corrupt samples) and
``cinescene/data/order.py`` (the shuffle orders).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import in_range, non_negative, one_of, positive, require

# What the synthetic renderer can draw (cinescene/data/synth): scene kinds, and camera moves in the order
# clips draw them from (the order is part of the data: clip i of seed K draws its move by index).
SCENE_KINDS = ("courtyard", "landscape", "room")
CAMERA_MOVES = ("orbit", "pan", "dolly", "truck", "crane", "orbit_crane", "dolly_pan")


def _kinds(value: list[str], key: str, allowed: tuple[str, ...]) -> None:
    require(len(value) > 0, key, f"at least one of {list(allowed)}", list(value))
    for item in value:
        one_of(item, key, list(allowed))
    require(len(set(value)) == len(value), key, "no repeated entries", list(value))


@dataclass
class SynthDataConfig:
    """`cinescene data synth` settings, used when `data.generate` is on and shards are absent."""

    clips: int = 32
    frames: int = 17
    size: list[int] = field(default_factory=lambda: [64, 64])
    scene_images: int = 6
    seed: int = 0
    workers: int = 1
    # Where the rendered clip directories go; default: "<train_shards>_clips" beside the shards.
    out: str | None = None
    # Which scene kinds and camera moves clips draw from (default: all of them, with equal chances).
    # Camera metrics need moves with a translation and textured scenes: the camera ablation renders
    # rooms and courtyards without pans.
    scenes: list[str] = field(default_factory=lambda: list(SCENE_KINDS))
    camera_moves: list[str] = field(default_factory=lambda: list(CAMERA_MOVES))

    def validate(self) -> None:
        positive(self.clips, "clips")
        require(
            self.frames >= 1 and (self.frames - 1) % 4 == 0,
            "frames",
            "1 + 4k frames (Wan's causal VAE stride)",
            self.frames,
        )
        require(
            len(self.size) == 2 and all(s >= 16 and s % 16 == 0 for s in self.size),
            "size",
            "[H, W], multiples of 16",
            list(self.size),
        )
        positive(self.scene_images, "scene_images")
        positive(self.workers, "workers")
        _kinds(self.scenes, "scenes", SCENE_KINDS)
        _kinds(self.camera_moves, "camera_moves", CAMERA_MOVES)


@dataclass
class DataConfig:
    # Webdataset shards: a directory holding manifest.json + *.tar. Required to train;
    # model-only configs (e.g. for `cinescene model info`) leave it unset.
    train_shards: str | None = None
    # Generate synthetic clips and prepare shards when train_shards is absent.
    generate: bool = False
    synth: SynthDataConfig = field(default_factory=SynthDataConfig)
    # DataLoader worker processes per rank (0: load in the training process).
    num_workers: int = 0
    # Global sample order per epoch: "global" (seeded permutation of every sample: best mixing,
    # one seek per sample), "block" (shards in seeded order, samples permuted within blocks of
    # shuffle_buffer: sequential-ish reads), "none" (manifest order). All resume exactly.
    shuffle: str = "global"
    shuffle_buffer: int = 64
    # Scene images used per sample (<= the number stored); shuffled per sample in training.
    scene_images: int = 6
    shuffle_scene_images: bool = True
    # Variable view count in training: None = every sample uses exactly scene_images images. Set (in
    # [1, scene_images]), each training sample keeps a count drawn uniformly from [scene_images_min,
    # scene_images] by (seed, global position), so a model learns to condition on few views as well as
    # many; the per-image arrays stay scene_images long, zero past the count, and the batch's
    # scene_counts says where. Evaluation always uses scene_images.
    scene_images_min: int | None = None
    # encoder=none shards keep pixels; the loader maps them to a latent-shaped proxy
    # (average pool by this factor, Wan's 4x temporal stride) for CPU-scale runs.
    pixel_pool: int = 4

    def validate(self) -> None:
        non_negative(self.num_workers, "num_workers")
        one_of(self.shuffle, "shuffle", ["global", "block", "none"])
        positive(self.shuffle_buffer, "shuffle_buffer")
        positive(self.scene_images, "scene_images")
        if self.scene_images_min is not None:
            in_range(self.scene_images_min, "scene_images_min", 1, self.scene_images)
        positive(self.pixel_pool, "pixel_pool")
