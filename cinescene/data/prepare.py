"""`cinescene data prepare`: clip directories -> encoded samples -> size-bounded webdataset shards.

Splitting work. Clips (sorted by name) are dealt round-robin: rank ``r`` of
``W`` takes clips ``r, r + W, ...`` and writes shards ``shard-r<r>-<k>.tar``.
``--rank/--world`` default to ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN``
and ``SLURM_ARRAY_TASK_COUNT``, so ``sbatch --array=0-7 ... data prepare``
just works. Each rank ends by writing ``manifest.rank<r>-of-<W>.json``; the
rank that finds all W of them merges them into ``manifest.json`` (under a
file lock). If ranks finish on different machines without a shared view at
the time, ``cinescene data prepare --out SHARDS --merge`` does the merge.

Resuming. A shard is written to ``.tmp`` and renamed; then a done marker
``<shard>.done.json`` records its sha256, sample index and clips. A restarted
rank keeps every shard whose marker and checksum agree and re-encodes from
the first one that does not, so shards come out exactly as in an
uninterrupted run.

Object storage. ``--out s3://bucket/prefix`` stages the directory locally
(:func:`cinescene.data.storage.staging_dir`, one per URL, so a rerun resumes
from it) and uploads each file as it is finished: a shard, then its done
marker, each rank's manifest, and ``manifest.json`` last, so a prefix with a
``manifest.json`` is complete. An object appears whole or not at all; one
already there with the staged file's size is not uploaded again (shards are
byte-identical for the same clips and settings). The merge reads every
rank's manifest from the bucket, so ranks on different machines need no
shared disk.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from cinescene.config import ConfigError
from cinescene.config.paths import check_output_location, check_separate
from cinescene.errors import CineSceneError, env_int
from cinescene.log import get_logger, progress

from . import storage
from .clips import Clip, list_clips, read_clip
from .encoders import TEMPORAL_STRIDE, make_encoder, wan_model_dirs
from .manifest import (
    MANIFEST,
    SUMMARY_KEYS,
    InvalidManifest,
    check_field,
    check_shard_record,
    expect,
    merge_rank_manifests,
    rank_manifest_name,
    read_json_file,
    write_json_atomic,
)
from .shards import BLOCK, ShardWriter, file_sha256, npy_bytes

SETTINGS = "prepare.json"
log = get_logger("data.prepare")


def resolve_rank(rank: int | None, world: int | None) -> tuple[int, int]:
    """Explicit values win; else the SLURM array task; else a single process."""
    env = os.environ
    if world is None and "SLURM_ARRAY_TASK_COUNT" in env:
        world = env_int("SLURM_ARRAY_TASK_COUNT")
    if rank is None and "SLURM_ARRAY_TASK_ID" in env:
        rank = env_int("SLURM_ARRAY_TASK_ID") - (
            env_int("SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        )
    rank = 0 if rank is None else rank
    world = 1 if world is None else world
    if world < 1:
        raise ConfigError("--world", f"expected a value >= 1, got {world}")
    if not 0 <= rank < world:
        raise ConfigError("--rank", f"expected 0 <= rank < world ({world}), got {rank}")
    return rank, world


def check_arguments(
    src,
    out,
    encoder: str,
    rank: int | None,
    world: int | None,
    shard_size_mb: float = 512,
    frames: int | None = None,
    size: Sequence[int] | None = None,
    dtype: str = "float16",
    device: str = "cpu",
) -> tuple[int, int]:
    """Every option of `data prepare` checked before anything is written (its log file included); returns
    (rank, world)."""
    rank, world = resolve_rank(rank, world)
    if not (math.isfinite(shard_size_mb) and shard_size_mb > 0):
        raise ConfigError("--shard-size-mb", f"expected a finite value > 0, got {shard_size_mb}")
    check_output_location(out, "--out")
    check_separate(src, out, "--src", "--out")
    if frames is not None and (frames < 1 or (frames - 1) % TEMPORAL_STRIDE):
        raise ConfigError("--frames", f"expected 1 + 4k frames, got {frames}")
    if size is not None and (len(size) != 2 or any(s < 8 or s % 8 for s in size)):
        raise ConfigError("--size", f"expected H W, multiples of 8, got {list(size)}")
    if encoder not in ("none", "wan"):
        raise ConfigError("--encoder", f"expected 'wan' or 'none', got {encoder!r}")
    if dtype not in ("float16", "float32"):
        raise ConfigError("--dtype", f"expected 'float16' or 'float32', got {dtype!r}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError("--device", f"expected cpu, cuda or cuda:N, got {device!r}")
    return rank, world


def _fit(images: np.ndarray, size: Sequence[int] | None):
    """Centre-crop to the target aspect and resize (bilinear); returns images and the K transform."""
    height, width = images.shape[1:3]
    if size is None or (height, width) == tuple(size):
        return images, np.eye(3)
    th, tw = size
    scale = max(th / height, tw / width)
    ch, cw = int(round(th / scale)), int(round(tw / scale))
    top, left = (height - ch) // 2, (width - cw) // 2
    out = np.stack(
        [
            np.asarray(Image.fromarray(im[top : top + ch, left : left + cw]).resize((tw, th), Image.BILINEAR))
            for im in images
        ]
    )
    transform = np.array([[tw / cw, 0, -left * tw / cw], [0, th / ch, -top * th / ch], [0, 0, 1.0]])
    return out, transform


def sample_arrays(clip: Clip, frames: int | None, size: Sequence[int] | None) -> dict[str, np.ndarray]:
    """The encoder-independent part of a sample: pixels, per-latent-frame cameras, scene views."""
    available = len(clip.video)
    count = frames or 1 + (available - 1) // TEMPORAL_STRIDE * TEMPORAL_STRIDE
    if count > available:
        raise CineSceneError(f"clip {clip.clip_id}: has {available} frames, --frames asks for {count}")
    video, transform = _fit(clip.video[:count], size)
    latent = np.arange(0, count, TEMPORAL_STRIDE)
    arrays = {
        "video.npy": video,
        "cameras.npy": clip.c2w[latent].astype(np.float32),
        "intrinsics.npy": (transform @ clip.K[latent]).astype(np.float32),
        "scene.npy": clip.scene_images.astype(np.uint8),
        "scene_cameras.npy": clip.scene_c2w.astype(np.float32),
        "scene_intrinsics.npy": clip.scene_K.astype(np.float32),
    }
    if clip.video_bg is not None:
        arrays["video_bg.npy"] = _fit(clip.video_bg[:count], size)[0]
    return arrays


class _RankState:
    """This rank's finished shards (from done markers), verified against their files."""

    def __init__(self, out: Path, rank: int):
        self.out, self.rank = out, rank
        self.records: list[dict] = []
        self.done_clips: set = set()
        k = 0
        while (marker := out / f"{self.shard_name(k)}.done.json").is_file():
            problem, record = _read_done_marker(marker, self.shard_name(k))
            if problem is None and file_sha256(out / record["name"]) != record["sha256"]:
                problem = "the shard does not match its checksum"
            if problem is not None:
                log.warning("%s: %s; re-encoding from it", marker.name, problem)
                self._discard_from(k)
                break
            self.records.append(record)
            self.done_clips.update(record["clips"])
            k += 1

    def shard_name(self, k: int) -> str:
        return f"shard-r{self.rank:05d}-{k:06d}.tar"

    def _discard_from(self, k: int) -> None:
        while (self.out / f"{self.shard_name(k)}.done.json").exists() or (
            self.out / self.shard_name(k)
        ).exists():
            (self.out / f"{self.shard_name(k)}.done.json").unlink(missing_ok=True)
            (self.out / self.shard_name(k)).unlink(missing_ok=True)
            k += 1


def _read_done_marker(marker: Path, shard_name: str) -> tuple[str | None, dict | None]:
    """(None, record) for a sound done marker of ``shard_name``, else (what is wrong, None).

    A marker is our own bookkeeping: a damaged one only means its shard is encoded again.
    """
    try:
        record = read_json_file(marker)
        expect(
            isinstance(record, dict) and record.get("name") == shard_name,
            "name",
            repr(shard_name),
            record.get("name") if isinstance(record, dict) else record,
        )
        check_shard_record(0, record)
        expect(
            isinstance(record.get("clips"), list)
            and len(record["clips"]) == record["num_samples"]
            and all(isinstance(c, str) for c in record["clips"]),
            "clips",
            "one clip name per sample",
            record.get("clips"),
        )
        expect(isinstance(record.get("encoder"), dict), "encoder", "an object", record.get("encoder"))
        expect(
            isinstance(record.get("summary"), dict) and set(SUMMARY_KEYS) <= set(record["summary"]),
            "summary",
            f"an object with {', '.join(SUMMARY_KEYS)}",
            record.get("summary"),
        )
        expect(isinstance(record.get("fields"), dict), "fields", "an object", record.get("fields"))
        for name, desc in record["fields"].items():
            check_field(name, desc)
    except (CineSceneError, InvalidManifest) as exc:
        return str(exc).replace(f"{marker}: ", ""), None
    if not (marker.parent / shard_name).is_file():
        return "its shard is missing", None
    return None, record


def _describe(arrays: dict[str, np.ndarray]) -> dict:
    return {name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in arrays.items()}


def _add_fields(total: dict, sample: dict, where: str) -> None:
    """Accumulate field descriptions; shapes must agree (text.npy may vary in length).

    ``count`` says how many samples have the field: fields missing from some
    samples (video_bg of a clip without a pair) are optional to the loader.
    """
    for name, desc in sample.items():
        shape = [-1] + desc["shape"][1:] if name == "text.npy" else desc["shape"]
        ref = total.setdefault(name, {"shape": shape, "dtype": desc["dtype"], "count": 0})
        if (ref["shape"], ref["dtype"]) != (shape, desc["dtype"]):
            raise CineSceneError(
                f"{where}: {name} is {desc['dtype']} {shape}, other samples {ref['dtype']} "
                f"{ref['shape']} (use --frames/--size to make clips uniform)"
            )
        ref["count"] += desc.get("count", 1)


def _shape_summary(arrays: dict[str, np.ndarray]) -> dict:
    video, scene = arrays["video.npy"], arrays["scene.npy"]
    return {
        "frames": int(video.shape[0]),
        "latent_frames": int(len(arrays["cameras.npy"])),
        "size": [int(video.shape[1]), int(video.shape[2])],
        "scene_images": int(scene.shape[0]),
        "scene_size": [int(scene.shape[1]), int(scene.shape[2])],
    }


def _rank_manifest(records: list[dict]) -> dict:
    """This rank's part of the manifest, from its shard
    records alone (so resumed runs need no re-encoding)."""
    fields: dict = {}
    summary = records[0]["summary"] if records else {k: None for k in SUMMARY_KEYS}
    for record in records:
        _add_fields(fields, record["fields"], record["name"])
        if record["summary"] != summary:
            raise CineSceneError(
                f"{record['name']}: samples of shape {record['summary']}, earlier shards {summary} "
                "(use --frames/--size to make clips uniform)"
            )
    shards = [{k: r[k] for k in ("name", "bytes", "sha256", "num_samples", "samples")} for r in records]
    return {
        "encoder": records[0]["encoder"] if records else None,
        "fields": fields,
        "shards": shards,
        "num_samples": sum(r["num_samples"] for r in records),
        **summary,
    }


def prepare(
    src,
    out,
    encoder: str = "none",
    vae: str | None = None,
    text_encoder: str | None = None,
    tokenizer: str | None = None,
    rank: int | None = None,
    world: int | None = None,
    shard_size_mb: float = 512,
    frames: int | None = None,
    size: Sequence[int] | None = None,
    dtype: str = "float16",
    device: str = "cpu",
    show_progress: bool = True,
    keep_pixels: bool = False,
) -> Path | None:
    """Encode this rank's clips into shards. Returns manifest.json's path once every rank is done.

    ``keep_pixels``: ``wan`` shards keep the frames (``video.npy``, ``video_bg.npy``) beside the
    latents, as evaluation shards must (pixel metrics against the ground truth); ``none`` shards
    always keep them.
    """
    rank, world = check_arguments(src, out, encoder, rank, world, shard_size_mb, frames, size, dtype, device)
    if encoder == "wan":
        wan_model_dirs(vae, text_encoder, tokenizer)  # fail before writing anything
    clips = list_clips(Path(src))
    publisher = Publisher.of(out)
    out = output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if publisher is not None:
        publisher.fetch(SETTINGS)  # the settings another rank (machine) agreed on
    settings = {
        "encoder": encoder,
        "world": world,
        "shard_size_mb": shard_size_mb,
        "frames": frames,
        "size": None if size is None else list(size),
        "dtype": dtype,
        "num_clips": len(clips),
    }
    if keep_pixels:  # only when set, so directories prepared before the option existed still resume
        settings["keep_pixels"] = True
    _check_settings(out, settings)
    state = _RankState(out, rank)
    if publisher is not None:
        publisher.put(SETTINGS)
        for record in state.records:  # staged by an earlier run that may have stopped before uploading
            publisher.shard(record["name"])
    mine = clips[rank::world]
    todo = [c for c in mine if c.name.replace(".", "_") not in state.done_clips]
    log.info(
        "rank %d/%d: %d clips (%d already in %d finished shards) -> %s [encoder=%s]",
        rank,
        world,
        len(mine),
        len(mine) - len(todo),
        len(state.records),
        out if publisher is None else f"{publisher.remote} (staged in {out})",
        encoder,
    )
    start = time.perf_counter()
    skipped: list[dict] = []
    if todo:
        enc = make_encoder(encoder, vae, text_encoder, tokenizer, device, dtype)
        skipped = _write_shards(
            out,
            state,
            todo,
            enc,
            frames,
            size,
            int(shard_size_mb * 2**20),
            show_progress,
            keep_pixels,
            publisher,
        )
    manifest = _rank_manifest(state.records)
    manifest["skipped_clips"] = skipped
    write_json_atomic(out / rank_manifest_name(rank, world), manifest, compact=True)
    if publisher is not None:
        publisher.put(rank_manifest_name(rank, world))
    log.info(
        "rank %d/%d: %d samples in %d shards, %d damaged clips skipped (%.1f s)",
        rank,
        world,
        manifest["num_samples"],
        len(state.records),
        len(skipped),
        time.perf_counter() - start,
    )
    return merge_if_complete(out, world, publisher)


def _write_shards(
    out: Path,
    state: _RankState,
    todo: list[Path],
    enc,
    frames,
    size,
    limit: int,
    show_progress: bool,
    keep_pixels: bool = False,
    publisher: Publisher | None = None,
) -> list[dict]:
    """Encode ``todo`` into this rank's shards; returns the clips skipped as damaged (clip, reason)."""
    skipped: list[dict] = []
    writer: ShardWriter | None = None
    keys: list[str] = []
    fields_seen: dict = {}
    shard_summary: dict = {}

    def finish():
        nonlocal writer, keys, fields_seen
        record = writer.close()
        record.update(clips=keys, encoder=enc.info(), summary=shard_summary, fields=fields_seen)
        write_json_atomic(out / f"{record['name']}.done.json", record, compact=True)
        if publisher is not None:
            publisher.shard(record["name"])
        state.records.append(record)
        writer, keys, fields_seen = None, [], {}

    try:
        for path in progress(todo, enabled=show_progress, desc="prepare", unit="clip"):
            try:
                clip = read_clip(path)
                arrays = sample_arrays(clip, frames, size)
            except CineSceneError as exc:  # a damaged clip: skipped and counted, the others go on
                log.warning("skipped %s", str(exc).removeprefix("clip "))
                skipped.append({"clip": path.name, "reason": str(exc)})
                continue
            key = clip.clip_id.replace(".", "_")
            summary = _shape_summary(arrays)
            arrays.update(enc.encode(arrays["video.npy"], arrays["scene.npy"], clip.prompt))
            if (
                enc.name == "wan" and not keep_pixels
            ):  # latents replace the frames; scene pixels stay for VGGT
                arrays.pop("video.npy")
                arrays.pop("video_bg.npy", None)
            fields = {name: npy_bytes(a) for name, a in arrays.items()}
            fields["prompt.txt"] = (clip.prompt + "\n").encode()
            fields["meta.json"] = json.dumps(dict(clip.meta, clip_id=clip.clip_id), sort_keys=True).encode()
            need = sum(BLOCK + -(-len(b) // BLOCK) * BLOCK for b in fields.values())
            if writer is not None and len(writer) and writer.size + need > limit:
                finish()
            if writer is None:
                writer = ShardWriter(out / state.shard_name(len(state.records)))
                shard_summary = summary
            elif summary != shard_summary:
                raise CineSceneError(
                    f"clip {key}: {summary} differs from earlier clips {shard_summary} "
                    "(use --frames/--size to make clips uniform)"
                )
            _add_fields(fields_seen, _describe(arrays), f"clip {key}")
            writer.write(key, fields)
            keys.append(key)
        if writer is not None and len(writer):
            finish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return skipped


def _check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS
    if path.is_file():
        previous = _read_settings(path)
        if previous != settings:
            diff = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
            raise CineSceneError(
                f"{out} was prepared with other settings {diff} (old, new); use another --out "
                "or the same options"
            )
    else:
        write_json_atomic(path, settings)


def _read_settings(path: Path) -> dict:
    """``prepare.json``: the settings every rank of a shard directory agreed on."""
    settings = read_json_file(path)
    if not (isinstance(settings, dict) and isinstance(settings.get("world"), int) and settings["world"] >= 1):
        raise CineSceneError(
            f"{path}: not the settings file `cinescene data prepare` writes (expected an object "
            "with the world size and encoder); remove it, or the whole directory, to start over"
        )
    return settings


def merge_if_complete(out: Path, world: int, publisher: Publisher | None = None):
    """Merge the rank manifests when all are present (safe if several ranks try at once); with a
    ``publisher``, the rank manifests are the bucket's and the merged manifest is uploaded last."""
    names = [rank_manifest_name(r, world) for r in range(world)]
    if publisher is not None and not all(publisher.fetch(name) for name in names):
        return None
    if not all((out / name).is_file() for name in names):
        return None

    with FileLock(str(out / ".merge.lock")):
        merge_rank_manifests(out, world)
    if publisher is None:
        return out / MANIFEST
    publisher.put(MANIFEST, replace=True)
    return publisher.remote / MANIFEST


def merge(out):
    """``data prepare --merge``: merge the rank manifests named by ``prepare.json``'s world size."""
    publisher = Publisher.of(out)
    local = output_dir(out)
    if publisher is not None:
        local.mkdir(parents=True, exist_ok=True)
        publisher.fetch(SETTINGS)
    path = local / SETTINGS
    if not path.is_file():
        raise CineSceneError(f"{out}: no {SETTINGS}; was `cinescene data prepare` run into it?")
    world = _read_settings(path)["world"]
    if publisher is not None:
        missing = [r for r in range(world) if not publisher.fetch(rank_manifest_name(r, world))]
        if missing:
            raise CineSceneError(
                f"{out}: rank {missing[0]} of {world} has not finished "
                f"(no {rank_manifest_name(missing[0], world)})"
            )
        return merge_if_complete(local, world, publisher)
    merge_rank_manifests(local, world)
    return local / MANIFEST


def output_dir(out) -> Path:
    """The local directory `prepare` writes: ``out`` itself, or the staging directory of an s3:// URL."""
    target = storage.location(out)
    return storage.staging_dir(target) if isinstance(target, storage.ObjectPath) else target


class Publisher:
    """Uploads a staged shard directory to object storage, each file as one object (see the module doc)."""

    def __init__(self, remote: storage.ObjectPath, staging: Path):
        self.remote, self.staging = remote, staging
        self.store = storage.object_store()
        self.present = self.store.sizes(remote)  # {name: size} already in the bucket

    @classmethod
    def of(cls, out) -> Publisher | None:
        target = storage.location(out)
        if not isinstance(target, storage.ObjectPath):
            return None
        return cls(target, storage.staging_dir(target))

    def put(self, name: str, replace: bool = False) -> None:
        """Upload the staged ``name`` unless an object of its size is there (``replace``: always)."""
        local = self.staging / name
        size = local.stat().st_size
        if not replace and self.present.get(name) == size:
            return
        self.store.put_file(local, self.remote / name)
        self.present[name] = size

    def shard(self, name: str) -> None:
        """A finished shard: the tar first, then its done marker (a marker never names a missing shard)."""
        self.put(name)
        self.put(f"{name}.done.json")

    def fetch(self, name: str) -> bool:
        """Download ``name`` into the staging directory when the bucket has it and the stage does not (or
        differs in size); whether the stage holds it now."""
        local = self.staging / name
        if name not in self.present:
            self.present = self.store.sizes(self.remote)  # another rank may have uploaded it since
        if name in self.present and not (local.is_file() and local.stat().st_size == self.present[name]):
            write_json_bytes_atomic(local, storage.read_bytes(self.remote / name))
        return local.is_file()


def write_json_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
