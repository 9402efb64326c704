"""Training data: shard locations, loader behaviour, and on-the-fly synthetic data.

What the loader does with these settings is documented in
``cinescene/data/loader.py`` (cursor, resume, corrupt samples) and
``cinescene/data/order.py`` (the shuffle orders).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import ConfigError, at_most, in_range, non_negative, one_of, positive, require

# Shard directories may live on S3-compatible object storage (cinescene/data/storage.py).
OBJECT_URL_SCHEME = "s3://"


def is_object_url(value: object) -> bool:
    return str(value).startswith(OBJECT_URL_SCHEME)


def check_object_url(url: str, key: str = "") -> str:
    """``url`` (``s3://bucket[/prefix]``) without a trailing slash; a URL that names no bucket or carries a
    credential or a port is refused (credentials come from the environment or a profile, never a URL)."""
    rest = url[len(OBJECT_URL_SCHEME) :].strip("/")
    bucket = rest.partition("/")[0]
    if not bucket:
        raise ConfigError(key, f"expected s3://bucket/prefix, got {url!r}")
    if "@" in bucket or ":" in bucket:
        raise ConfigError(
            key,
            "an s3:// URL must not carry credentials or a port: give them as AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or a profile, the endpoint as AWS_ENDPOINT_URL",
        )
    return OBJECT_URL_SCHEME + rest


@dataclass
class ObjectStoreConfig:
    """Shards on object storage: how long a transient error (refused or reset connection, timeout, 5xx,
    throttling) is retried, with exponential backoff, before it stops the run with one line."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def validate(self) -> None:
        positive(self.attempts, "attempts")
        non_negative(self.backoff_s, "backoff_s")
        non_negative(self.max_backoff_s, "max_backoff_s")


# Bounds of one synthetic clip (its frames with and without the subject are held in memory while it
# renders): Wan's own clips are 81 frames at 480x832; more could only exhaust memory.
MAX_SYNTH_FRAMES, MAX_SYNTH_SIZE, MAX_SYNTH_SCENE_IMAGES = 161, 1024, 64


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
        non_negative(self.seed, "seed")
        why = "one clip is held in memory while it renders"
        at_most(self.frames, "frames", MAX_SYNTH_FRAMES, why)
        for i, side in enumerate(self.size):
            at_most(side, f"size[{i}]", MAX_SYNTH_SIZE, why)
        at_most(self.scene_images, "scene_images", MAX_SYNTH_SCENE_IMAGES, why)


@dataclass
class DataConfig:
    # Webdataset shards: a directory holding manifest.json + *.tar, or the same on object storage
    # (s3://bucket/prefix, see object_store). Required to train; model-only configs (e.g. for
    # `cinescene model info`) leave it unset.
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
    # Retries of shards on object storage (data.train_shards and eval.data as s3:// URLs).
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)

    def validate(self) -> None:
        if self.train_shards and is_object_url(self.train_shards):
            check_object_url(self.train_shards, "train_shards")
            require(
                not self.generate,
                "generate",
                "false with s3:// train_shards (synthetic data is rendered to a local directory: "
                "prepare it there, then `cinescene data prepare --out s3://...`)",
                self.generate,
            )
        non_negative(self.num_workers, "num_workers")
        one_of(self.shuffle, "shuffle", ["global", "block", "none"])
        positive(self.shuffle_buffer, "shuffle_buffer")
        positive(self.scene_images, "scene_images")
        if self.scene_images_min is not None:
            in_range(self.scene_images_min, "scene_images_min", 1, self.scene_images)
        positive(self.pixel_pool, "pixel_pool")
