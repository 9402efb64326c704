"""``manifest.json``: what a shard directory holds, and the per-sample index the loader reads by.

Layout of a shard directory written by `cinescene data prepare`::

    manifest.json                          the merged manifest (below); the loader needs only this
    manifest.rank00000-of-00002.json       one per prepare rank; merged by the last rank to finish
    prepare.json                           settings every rank must agree on (encoder, world, ...)
    shard-r00000-000000.tar                webdataset shards, size-bounded
    shard-r00000-000000.tar.done.json      per-shard done marker: its manifest record (sha256 ...)

``manifest.json``::

    {"format": "cinescene-shards/1",
     "encoder": {"name": "none"|"wan", ...ids of the VAE / text encoder...},
     "num_samples": N, "num_shards": M,
     "fields": {"video.npy": {"shape": [...], "dtype": "uint8"}, ...},   # identical for every sample
     "frames": F, "latent_frames": T, "size": [H, W], "scene_images": S, "scene_size": [Hs, Ws],
     "shards": [{"name", "bytes", "sha256", "num_samples", "samples": [[key, offset, length, crc32], ...]}],
     "skipped_clips": [{"clip", "reason"}, ...]}                          # damaged clips prepare skipped

Everything is written with sorted keys and no timestamps: the same clips give
a byte-identical manifest.

Every reader goes through :func:`check_manifest` first: a file that is valid
JSON but not this structure (a list, a missing ``shards``, a string where a
count belongs, a shard name that is a path) is one CineSceneError naming the
file and the first thing wrong, never a KeyError deep in the loader.
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cinescene.config.data import ObjectStoreConfig
from cinescene.config.paths import kind_problem
from cinescene.durable import write_json_atomic
from cinescene.errors import CineSceneError

from . import storage

FORMAT = "cinescene-shards/1"
MANIFEST = "manifest.json"
SUMMARY_KEYS = ("frames", "latent_frames", "size", "scene_images", "scene_size")
# The arrays the loader reads from every sample, by encoder, with their number of dimensions.
REQUIRED_FIELDS = {
    "none": {"video.npy": 4, "scene.npy": 4, "cameras.npy": 3, "intrinsics.npy": 3, "scene_cameras.npy": 3},
    "wan": {
        "latents.npy": 4,
        "text.npy": 2,
        "scene_latents.npy": 4,
        "scene.npy": 4,
        "cameras.npy": 3,
        "intrinsics.npy": 3,
        "scene_cameras.npy": 3,
    },
}
# A field whose first dimension varies per sample (-1 in the manifest): umT5 tokens of the prompt.
VARIABLE_LENGTH_FIELDS = ("text.npy",)
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist = 40, 40, 4


def rank_manifest_name(rank: int, world: int) -> str:
    return f"manifest.rank{rank:05d}-of-{world:05d}.json"


@dataclass
class SampleRef:
    """Where one sample lives: enough to read it with one seek (one ranged GET on object storage)."""

    shard: Path | storage.ObjectPath
    key: str
    offset: int
    length: int
    crc: int


@dataclass
class ShardFile:
    """A shard's file against its manifest record, judged by size alone (no reads)."""

    name: str
    path: Path | storage.ObjectPath
    expected_bytes: int
    size: int | None  # None: missing

    @property
    def status(self) -> str:
        if self.size is None:
            return "missing"
        return "truncated" if self.size < self.expected_bytes else "ok"

    def describe(self) -> str:
        if self.status == "truncated":
            return f"{self.name} (truncated: {self.size} of {self.expected_bytes} bytes)"
        return f"{self.name} ({self.status})"


@dataclass
class Manifest:
    root: Path | storage.ObjectPath  # a shard directory, or a prefix on object storage
    data: dict
    retry: ObjectStoreConfig | None = None  # object storage: how transient errors are retried

    @property
    def encoder(self) -> str:
        return self.data["encoder"]["name"]

    @property
    def fields(self) -> dict:
        return self.data["fields"]

    @property
    def num_samples(self) -> int:
        return int(self.data["num_samples"])

    def shard_files(self) -> list[ShardFile]:
        """Every shard's file status, in manifest order (one listing on object storage)."""
        found = storage.sizes(self.root, [shard["name"] for shard in self.data["shards"]], self.retry)
        return [
            ShardFile(shard["name"], self.root / shard["name"], int(shard["bytes"]), found[shard["name"]])
            for shard in self.data["shards"]
        ]

    def samples(self) -> list[SampleRef]:
        """Every sample in manifest order (shards by name, samples in shard order)."""
        refs = []
        for shard in self.data["shards"]:
            path = self.root / shard["name"]
            refs.extend(SampleRef(path, key, int(o), int(n), int(c)) for key, o, n, c in shard["samples"])
        return refs


class InvalidManifest(Exception):
    """A structural problem, named by its place (``shards[3].samples[0]: expected ..., got ...``)."""


def expect(condition: bool, where: str, expected: str, value: Any = None) -> None:
    if not condition:
        raise InvalidManifest(f"{where}: expected {expected}, got {_short.repr(value)}")


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_field(name: str, desc: Any) -> None:
    where = f"fields[{name!r}]"
    expect(
        isinstance(desc, dict) and {"shape", "dtype", "count"} <= set(desc),
        where,
        "an object with shape, dtype and count",
        desc,
    )
    shape, dtype = desc["shape"], desc["dtype"]
    low = -1 if name in VARIABLE_LENGTH_FIELDS else 0
    expect(
        isinstance(shape, list)
        and all(_is_int(d, low) for d in shape[:1])
        and all(_is_int(d) for d in shape[1:]),
        f"{where}.shape",
        "a list of sizes",
        shape,
    )
    try:
        valid_dtype = isinstance(dtype, str) and not np.dtype(dtype).hasobject
    except TypeError:
        valid_dtype = False
    expect(valid_dtype, f"{where}.dtype", "a numpy dtype name such as 'float16'", dtype)
    expect(_is_int(desc["count"]), f"{where}.count", "a sample count", desc["count"])


def check_shard_record(i: int, shard: Any) -> int:
    where = f"shards[{i}]"
    keys = ("name", "bytes", "sha256", "num_samples", "samples")
    expect(
        isinstance(shard, dict) and set(keys) <= set(shard),
        where,
        f"an object with {', '.join(keys)}",
        shard if not isinstance(shard, dict) else sorted(shard),
    )
    name = shard["name"]
    expect(
        isinstance(name, str) and name == Path(name).name and name not in ("", ".", ".."),
        f"{where}.name",
        "a file name in the shard directory (not a path)",
        name,
    )
    expect(_is_int(shard["bytes"]), f"{where}.bytes", "a size in bytes", shard["bytes"])
    expect(isinstance(shard["sha256"], str), f"{where}.sha256", "a hex digest", shard["sha256"])
    samples = shard["samples"]
    expect(
        isinstance(samples, list) and _is_int(shard["num_samples"]) and len(samples) == shard["num_samples"],
        f"{where}.samples",
        f"a list of num_samples={_short.repr(shard['num_samples'])} entries",
        samples if not isinstance(samples, list) else f"{len(samples)} entries",
    )
    for j, ref in enumerate(samples):
        expect(
            isinstance(ref, list)
            and len(ref) == 4
            and isinstance(ref[0], str)
            and _is_int(ref[1])
            and _is_int(ref[2], 1)
            and _is_int(ref[3])
            and ref[1] + ref[2] <= shard["bytes"],
            f"{where}.samples[{j}]",
            "[key, offset, length, crc32] inside the shard's bytes",
            ref,
        )
    return len(samples)


def check_manifest(data: Any, merged: bool = True) -> None:
    """Raise ``InvalidManifest`` naming the first structural problem of a (merged or per-rank) manifest."""
    expect(isinstance(data, dict), "top level", "a JSON object", type(data).__name__)
    if merged:
        expect(data.get("format") == FORMAT, "format", repr(FORMAT), data.get("format"))
    for key in ("num_samples", "shards", "fields", "encoder") + SUMMARY_KEYS:
        if key not in data:
            raise InvalidManifest(f"{key}: missing")
    expect(
        _is_int(data["num_samples"], 1 if merged else 0),
        "num_samples",
        "a positive sample count" if merged else "a sample count",
        data["num_samples"],
    )
    expect(isinstance(data["shards"], list), "shards", "a list of shard records", data["shards"])
    total = sum(check_shard_record(i, shard) for i, shard in enumerate(data["shards"]))
    expect(
        total == data["num_samples"],
        "num_samples",
        f"the {total} samples the shards list",
        data["num_samples"],
    )
    if not total:  # a prepare rank that got no clips: nothing else is described
        return
    encoder = data["encoder"]
    expect(
        isinstance(encoder, dict) and encoder.get("name") in REQUIRED_FIELDS,
        "encoder",
        f"an object whose name is one of {sorted(REQUIRED_FIELDS)}",
        encoder,
    )
    fields = data["fields"]
    expect(isinstance(fields, dict), "fields", "an object of field descriptions", fields)
    for name, desc in fields.items():
        check_field(name, desc)
    for name, ndim in REQUIRED_FIELDS[encoder["name"]].items():
        desc = fields.get(name)
        expect(
            desc is not None and desc["count"] == total,
            f"fields[{name!r}]",
            f"a field every one of the {total} samples holds",
            desc,
        )
        expect(len(desc["shape"]) == ndim, f"fields[{name!r}].shape", f"{ndim} dimensions", desc["shape"])
    for key in ("frames", "latent_frames", "scene_images"):
        expect(_is_int(data[key], 1), key, "a positive count", data[key])
    for key in ("size", "scene_size"):
        expect(
            isinstance(data[key], list) and len(data[key]) == 2 and all(_is_int(v, 1) for v in data[key]),
            key,
            "[height, width]",
            data[key],
        )
    _check_summary_against_fields(data, fields)


# Which dimensions of which field state each summary key (a manifest edited to claim other counts or sizes
# than its arrays hold is refused): field -> [(summary key, index into the summary value or None, axis)].
_SUMMARY_AXES = {
    "video.npy": [("frames", None, 0), ("size", 0, 1), ("size", 1, 2)],
    "latents.npy": [("latent_frames", None, 1)],
    "cameras.npy": [("latent_frames", None, 0)],
    "intrinsics.npy": [("latent_frames", None, 0)],
    "scene.npy": [("scene_images", None, 0), ("scene_size", 0, 1), ("scene_size", 1, 2)],
    "scene_cameras.npy": [("scene_images", None, 0)],
    "scene_latents.npy": [("scene_images", None, 0)],
}


def _check_summary_against_fields(data: dict, fields: dict) -> None:
    stride = 4  # Wan's causal VAE: latent frame j holds source frames 4j-3..4j (and the first one alone)
    expect(
        data["latent_frames"] == (data["frames"] - 1) // stride + 1,
        "latent_frames",
        f"{(data['frames'] - 1) // stride + 1} for {data['frames']} frames",
        data["latent_frames"],
    )
    for name, axes in _SUMMARY_AXES.items():
        shape = fields.get(name, {}).get("shape")
        if shape is None:
            continue
        for key, index, axis in axes:
            claimed = data[key] if index is None else data[key][index]
            expect(
                axis < len(shape) and shape[axis] == claimed,
                key,
                f"what fields[{name!r}] holds ({'x'.join(map(str, shape))})",
                claimed,
            )


def read_manifest_file(path: Path, merged: bool = True, retry: ObjectStoreConfig | None = None) -> dict:
    """A manifest file's contents after :func:`check_manifest`; any problem is one CineSceneError."""
    data = read_json_file(path, retry)
    try:
        check_manifest(data, merged)
    except InvalidManifest as exc:
        raise CineSceneError(f"{path}: not a valid shard manifest: {exc}") from None
    return data


def read_json_file(path: Path, retry: ObjectStoreConfig | None = None) -> Any:
    """A JSON file's contents; unreadable or invalid JSON is one CineSceneError naming the file."""
    try:
        return json.loads(storage.read_bytes(path, retry))
    except OSError as exc:
        raise CineSceneError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise CineSceneError(f"{path}: not valid JSON ({reason})") from None


def load_manifest(root, retry: ObjectStoreConfig | None = None) -> Manifest:
    """The manifest of a shard directory or of an s3:// prefix (``retry``: its transient errors)."""
    root = storage.location(root)
    path = root / MANIFEST
    if isinstance(root, storage.ObjectPath):
        if not storage.exists(path, retry):
            raise CineSceneError(f"{root}: no {MANIFEST} (run `cinescene data prepare --out {root}`)")
        return Manifest(root, read_manifest_file(path, retry=retry), retry)
    problem = kind_problem(root, "directory")
    if problem is not None:
        raise CineSceneError(f"shard directory {root} {problem}")
    if not path.is_file():
        partial = sorted(p.name for p in root.glob("manifest.rank*.json"))
        hint = (
            f" ({len(partial)} rank manifests present: finish every `data prepare --rank` or run "
            "`cinescene data prepare --merge`)"
            if partial
            else " (run `cinescene data prepare`)"
        )
        raise CineSceneError(f"{root}: no {MANIFEST}{hint}")
    return Manifest(root, read_manifest_file(path))


def merge_rank_manifests(root: Path, world: int) -> dict:
    """Combine every rank's manifest into ``manifest.json``; an error names missing or disagreeing ranks."""
    parts = []
    for rank in range(world):
        path = root / rank_manifest_name(rank, world)
        if not path.is_file():
            raise CineSceneError(f"{root}: rank {rank} of {world} has not finished (no {path.name})")
        parts.append(read_manifest_file(path, merged=False))
    described = [p for p in parts if p["num_samples"]]
    if not described:
        skipped = [c for p in parts for c in p.get("skipped_clips") or [] if isinstance(c, dict)]
        why = f" (all {len(skipped)} clips damaged, e.g. {skipped[0].get('reason')})" if skipped else ""
        raise CineSceneError(f"{root}: no rank wrote any sample{why}")
    first = described[0]
    fields = {name: dict(desc, count=0) for name, desc in first["fields"].items()}
    for part in described:
        for key in ("encoder",) + SUMMARY_KEYS:
            if part[key] != first[key]:
                raise CineSceneError(f"{root}: ranks disagree on {key}: {first[key]} vs {part[key]}")
        for name, desc in part["fields"].items():
            ref = fields.setdefault(name, dict(desc, count=0))
            if (ref["shape"], ref["dtype"]) != (desc["shape"], desc["dtype"]):
                raise CineSceneError(f"{root}: ranks disagree on {name}: {ref} vs {desc}")
            ref["count"] += desc["count"]
    shards = sorted((s for p in parts for s in p["shards"]), key=lambda s: s["name"])
    merged = {key: first[key] for key in SUMMARY_KEYS}
    merged.update(
        format=FORMAT,
        encoder=first["encoder"],
        fields=fields,
        shards=shards,
        num_shards=len(shards),
        num_samples=sum(s["num_samples"] for s in shards),
        skipped_clips=sorted(
            (c for p in parts for c in p.get("skipped_clips") or []),
            key=lambda c: str(c.get("clip")) if isinstance(c, dict) else "",
        ),
    )
    write_json_atomic(root / MANIFEST, merged, compact=True)  # compact: it indexes every sample
    return merged
