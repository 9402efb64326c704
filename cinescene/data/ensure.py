"""``ensure_dataset(data_cfg)``: the trainer's one call before building a loader.

If ``data.train_shards`` holds a ``manifest.json`` it is used as is. Else, with
``data.generate`` on, synthetic clips are rendered (``data.synth``) into
``data.synth.out`` (default ``<train_shards>_clips``) and prepared with
``encoder=none`` into a temporary directory that is renamed to
``train_shards`` when complete -- a crash never leaves half a dataset behind.

Safe to call from every rank at once: the work happens under an exclusive
file lock ``<train_shards>.lock``; the first process to get it renders and
prepares, the others block on the lock and then find the manifest. (The
lock is ``fcntl``-based: fine on local disks and most cluster file systems;
where locks are not honoured, call it on one rank before the others start.)
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from cinescene.config import ConfigError
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from . import storage
from .manifest import MANIFEST, read_manifest_file

log = get_logger("data")


def require_train_shards(data_cfg) -> str:
    if not data_cfg.train_shards:
        raise ConfigError(
            "data.train_shards",
            "required for training: a directory with manifest.json "
            "and *.tar shards (`cinescene data prepare --out DIR`)",
        )
    return data_cfg.train_shards


def synth_clips_dir(data_cfg) -> Path:
    return Path(data_cfg.synth.out or f"{str(data_cfg.train_shards).rstrip('/')}_clips")


def check_dataset(data_cfg) -> Path | storage.ObjectPath:
    """Fail fast, before any rank starts, when the shards are neither there nor to be generated, or when
    their manifest is not one (a structurally wrong manifest.json is one line naming what is wrong)."""
    shards = storage.location(require_train_shards(data_cfg))
    if storage.exists(shards / MANIFEST):
        read_manifest_file(shards / MANIFEST)
    elif not data_cfg.generate:  # never on for s3:// shards (config validation)
        hint = "" if storage.is_object_url(shards) else ", or set data.generate=true for synthetic data"
        raise CineSceneError(
            f"no training data at {shards} (no {MANIFEST}); run `cinescene data prepare --out {shards}`{hint}"
        )
    return shards


def ensure_dataset(data_cfg) -> Path | storage.ObjectPath:
    """Return the train shard directory, generating synthetic data first when configured to."""
    shards = check_dataset(data_cfg)
    if storage.is_object_url(shards) or (shards / MANIFEST).is_file():
        return shards

    shards.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(shards) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is preparing %s; waiting", shards)
        lock.acquire()
    try:
        if (shards / MANIFEST).is_file():
            return shards
        if shards.exists() and any(shards.iterdir()):
            raise CineSceneError(
                f"{shards} exists without {MANIFEST}; remove it or point data.train_shards elsewhere"
            )
        _generate(data_cfg, shards)
    finally:
        lock.release()
    return shards


def _generate(data_cfg, shards: Path) -> None:
    from .prepare import prepare
    from .synth import synthesize

    synth = data_cfg.synth
    clips = synth_clips_dir(data_cfg)
    start = time.perf_counter()
    synthesize(
        clips,
        synth.clips,
        synth.frames,
        synth.size,
        synth.scene_images,
        synth.seed,
        synth.workers,
        scenes=synth.scenes,
        camera_moves=synth.camera_moves,
    )
    tmp = shards.with_name(f".{shards.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    prepare(clips, tmp, encoder="none", rank=0, world=1)
    if shards.exists():
        shards.rmdir()  # empty (checked under the lock)
    os.replace(tmp, shards)
    log.info(
        "synthetic dataset ready: %d clips -> %s (%.1f s)", synth.clips, shards, time.perf_counter() - start
    )
