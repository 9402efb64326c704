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
     "shards": [{"name", "bytes", "sha256", "num_samples", "samples": [[key, offset, length, crc32], ...]}]}

Everything is written with sorted keys and no timestamps: the same clips give
a byte-identical manifest.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from cinescene.errors import CineSceneError

FORMAT = "cinescene-shards/1"
MANIFEST = "manifest.json"
SUMMARY_KEYS = ("frames", "latent_frames", "size", "scene_images", "scene_size")


def rank_manifest_name(rank: int, world: int) -> str:
    return f"manifest.rank{rank:05d}-of-{world:05d}.json"


def write_json_atomic(path: Path, obj, compact: bool = True) -> None:
    """Write JSON via a temporary file and a rename; compact by default (manifests index every sample)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    text = json.dumps(obj, sort_keys=True, separators=(",", ":")) if compact else \
        json.dumps(obj, sort_keys=True, indent=1)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


@dataclass
class SampleRef:
    """Where one sample lives: enough to read it with one seek."""

    shard: Path
    key: str
    offset: int
    length: int
    crc: int


@dataclass
class ShardFile:
    """A shard's file against its manifest record, judged by size alone (no reads)."""

    name: str
    path: Path
    expected_bytes: int
    size: Optional[int]  # None: missing

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
    root: Path
    data: dict

    @property
    def encoder(self) -> str:
        return self.data["encoder"]["name"]

    @property
    def fields(self) -> dict:
        return self.data["fields"]

    @property
    def num_samples(self) -> int:
        return int(self.data["num_samples"])

    def shard_files(self) -> List[ShardFile]:
        """Every shard's file status, in manifest order."""
        files = []
        for shard in self.data["shards"]:
            path = self.root / shard["name"]
            files.append(ShardFile(shard["name"], path, int(shard["bytes"]),
                                   path.stat().st_size if path.is_file() else None))
        return files

    def samples(self) -> List[SampleRef]:
        """Every sample in manifest order (shards by name, samples in shard order)."""
        refs = []
        for shard in self.data["shards"]:
            path = self.root / shard["name"]
            refs.extend(SampleRef(path, key, int(o), int(n), int(c)) for key, o, n, c in shard["samples"])
        return refs


def load_manifest(root) -> Manifest:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise CineSceneError(f"shard directory not found: {root}")
    if not path.is_file():
        partial = sorted(p.name for p in root.glob("manifest.rank*.json"))
        hint = (f" ({len(partial)} rank manifests present: finish every `data prepare --rank` or run "
                "`cinescene data prepare --merge`)" if partial else " (run `cinescene data prepare`)")
        raise CineSceneError(f"{root}: no {MANIFEST}{hint}")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise CineSceneError(f"{path}: not valid JSON ({exc})") from None
    if data.get("format") != FORMAT:
        raise CineSceneError(f"{path}: unknown format {data.get('format')!r} (expected {FORMAT!r})")
    if not data.get("num_samples"):
        raise CineSceneError(f"{path}: the manifest lists no samples")
    return Manifest(root, data)


def merge_rank_manifests(root: Path, world: int) -> dict:
    """Combine every rank's manifest into ``manifest.json``; an error names missing or disagreeing ranks."""
    parts = []
    for rank in range(world):
        path = root / rank_manifest_name(rank, world)
        if not path.is_file():
            raise CineSceneError(f"{root}: rank {rank} of {world} has not finished (no {path.name})")
        parts.append(json.loads(path.read_text()))
    described = [p for p in parts if p["num_samples"]]
    if not described:
        raise CineSceneError(f"{root}: no rank wrote any sample")
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
    merged.update(format=FORMAT, encoder=first["encoder"], fields=fields, shards=shards, num_shards=len(shards),
                  num_samples=sum(s["num_samples"] for s in shards))
    write_json_atomic(root / MANIFEST, merged)
    return merged
