"""Tiny synthetic data shared by the data tests: 9 frames of 32x32, 3 scene images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cinescene.config.data import DataConfig
from cinescene.data.prepare import prepare
from cinescene.data.samples import LoaderDims
from cinescene.data.synth import synthesize

FRAMES, SIZE, SCENE_IMAGES = 9, (32, 32), 3
DIMS = LoaderDims(text_dim=8, text_len=12, channels=3)


def make_clips(root: Path, clips: int = 6, seed: int = 0) -> Path:
    return synthesize(root, clips, FRAMES, SIZE, SCENE_IMAGES, seed=seed, show_progress=False)


def data_config(shards: Path, **overrides) -> DataConfig:
    cfg = DataConfig(train_shards=str(shards), scene_images=SCENE_IMAGES, pixel_pool=4)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="session")
def tiny_clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips") / "clips")


@pytest.fixture(scope="session")
def tiny_shards(tiny_clips, tmp_path_factory) -> Path:
    """Six samples in three shards (about two samples per shard)."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    prepare(tiny_clips, out, encoder="none", rank=0, world=1, shard_size_mb=0.16, show_progress=False)
    return out


@pytest.fixture
def shards_copy(tiny_shards, tmp_path) -> Path:
    """A private copy a test may damage."""
    return Path(shutil.copytree(tiny_shards, tmp_path / "shards"))
