"""The per-save file manifest: every file of a step directory with its size and digest.

Digests are computed while the bytes are written (:class:`HashingWriter`
wraps the open file; ``torch.save`` and our own writers go through it), never
by reading the files back. Each rank records the files it wrote in a part
file; rank 0 merges the parts into ``manifest.json`` before the directory is
renamed into place. Resume re-hashes every file before it loads anything
(:func:`check_content`, the ranks sharing the files; ``checkpoint.verify``),
as ``cinescene ckpt info --verify`` does.

The digest is XXH3-128 (manifest format 2). It guards against accidental
damage (a truncated copy, a flipped bit, a file from another save), which a
128-bit hash of this quality detects as surely as SHA-256; it cannot guard
against someone who edits files on purpose, because that person can rewrite
the manifest too (loads never run code from a file: :mod:`.torchfile`).
SHA-256 hashed 1.8 GB/s per core here and was the slowest part of a save on
a node whose cores are shared by its ranks' writers; XXH3 hashes over
20 GB/s, so writing costs what the disk costs, and a verified load about what
an unverified one does. Format-1 manifests (SHA-256) are still read and
verified with SHA-256.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import xxhash

from .errors import DamagedCheckpointError
from .writeback import Writeback

MANIFEST = "manifest.json"
PART_PREFIX = ".manifest-part-"
FORMAT = 2
_HASH_CHUNK = 1 << 24


class Digest(str, enum.Enum):
    """A manifest's digest algorithm; its value is also the key of each file's hex digest."""

    XXH3_128 = "xxh3_128"  # what every save writes (format 2)
    SHA256 = "sha256"  # format-1 manifests, read and verified only

    def hasher(self):
        return xxhash.xxh3_128() if self is Digest.XXH3_128 else hashlib.sha256()


#: The algorithm of each manifest format this code reads.
FORMAT_DIGESTS = {1: Digest.SHA256, 2: Digest.XXH3_128}
WRITTEN_DIGEST = FORMAT_DIGESTS[FORMAT]


@dataclass(frozen=True)
class FileRecord:
    size: int
    digest: str  # hex
    algorithm: Digest = WRITTEN_DIGEST


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it (in write order), and
    streams it to the disk as it goes (:class:`~.writeback.Writeback`)."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.hasher = WRITTEN_DIGEST.hasher()
        self.size = 0
        self.error: OSError | None = None  # the first failed write (torch.save reports only its own error)
        self.writeback = Writeback(handle.fileno())

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.hasher.update(view)
        try:
            written = self.handle.write(view)
            if self.writeback.active:
                self.handle.flush()  # the bytes reach the file before their range is handed to the disk
                self.writeback.written_up_to(self.size + len(view))
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.size += len(view)
        return written

    def flush(self) -> None:
        self.handle.flush()

    def record(self) -> FileRecord:
        return FileRecord(self.size, self.hasher.hexdigest())


def write_hashed(path: Path, write) -> FileRecord:
    """Create ``path``, let ``write(writer)`` fill it through a :class:`HashingWriter`, fsync; its record.

    A failed write raises the operating system's error (a full disk is ``OSError`` ENOSPC), also when
    ``write`` is ``torch.save``, whose zip writer replaces it with an unrelated RuntimeError.
    """
    writer = None
    try:
        with open(path, "wb") as handle:
            writer = HashingWriter(handle)
            write(writer)
            handle.flush()
            os.fsync(handle.fileno())
            writer.writeback.synced()
    except Exception as exc:
        if writer is not None and writer.error is not None and writer.error is not exc:
            raise writer.error from None
        raise
    return writer.record()


def write_bytes(path: Path, data: bytes) -> FileRecord:
    return write_hashed(path, lambda writer: writer.write(data))


def hash_file(path: Path, algorithm: Digest = WRITTEN_DIGEST) -> FileRecord:
    digest, size = algorithm.hasher(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(size, digest.hexdigest(), algorithm)


# ------------------------------------------------------------------------ parts
def part_name(rank: int) -> str:
    return f"{PART_PREFIX}rank_{rank:05d}.json"


def write_part(step_dir: Path, rank: int, records: Mapping[str, FileRecord]) -> None:
    """This rank's written files (paths relative to ``step_dir``)."""
    body = _file_entries(records)
    path = step_dir / part_name(rank)
    with open(path, "w") as handle:
        json.dump(body, handle)
        handle.flush()
        os.fsync(handle.fileno())


def merge_parts(step_dir: Path, extra: Mapping[str, FileRecord]) -> dict[str, FileRecord]:
    """Rank 0: every part plus ``extra`` (its own late files), parts removed; write ``manifest.json``."""
    files: dict[str, FileRecord] = {}
    for part in sorted(step_dir.glob(f"{PART_PREFIX}*")):
        files.update(_file_records(json.loads(part.read_text()), WRITTEN_DIGEST))
        part.unlink()
    files.update(extra)
    body = {"format": FORMAT, "digest": WRITTEN_DIGEST.value, "files": _file_entries(files)}
    write_bytes(step_dir / MANIFEST, (json.dumps(body, indent=1) + "\n").encode())
    return files


def _file_entries(records: Mapping[str, FileRecord]) -> dict:
    """``{name: {"size": ..., "<algorithm>": hex}}``, as written (every record is of the written kind)."""
    assert all(r.algorithm is WRITTEN_DIGEST for r in records.values())
    return {name: {"size": r.size, WRITTEN_DIGEST.value: r.digest} for name, r in sorted(records.items())}


def _file_records(entries: Mapping, algorithm: Digest) -> dict[str, FileRecord]:
    return {
        str(name): FileRecord(int(r["size"]), str(r[algorithm.value]), algorithm)
        for name, r in entries.items()
    }


# ---------------------------------------------------------------------- reading
def read_manifest(step_dir: Path) -> dict[str, FileRecord] | None:
    """The manifest's files, or None when the directory has no manifest; a corrupt one is damage."""
    path = Path(step_dir) / MANIFEST
    try:
        body = json.loads(path.read_bytes().decode("utf-8"))
        fmt = body["format"]
        if fmt not in FORMAT_DIGESTS:
            raise DamagedCheckpointError(
                path, f"manifest format {fmt!r} is not one this version reads ({sorted(FORMAT_DIGESTS)})"
            )
        algorithm = FORMAT_DIGESTS[fmt]
        if fmt > 1 and body["digest"] != algorithm.value:
            raise ValueError(f"format {fmt} has digest {algorithm.value!r}, not {body['digest']!r}")
        records = _file_records(body["files"], algorithm)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DamagedCheckpointError(path, f"corrupt manifest ({type(exc).__name__}: {exc})") from None
    for name in records:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise DamagedCheckpointError(
                path, f"corrupt manifest (entry {name!r} points outside the step directory)"
            )
    return records


def check_sizes(step_dir: Path, files: Mapping[str, FileRecord]) -> None:
    """Raise DamagedCheckpointError for the first file that is missing or has another size (no reading)."""
    for name, record in sorted(files.items()):
        path = Path(step_dir) / name
        try:
            size = path.stat().st_size
        except OSError:
            raise DamagedCheckpointError(path, "missing (listed in the checkpoint's manifest)") from None
        if size != record.size:
            raise DamagedCheckpointError(
                path,
                f"{'truncated' if size < record.size else 'altered'}: "
                f"{size} bytes, the manifest says {record.size}",
            )


def check_content(path: Path, record: FileRecord) -> str | None:
    """What is wrong with one file against its manifest record (hashed while read), or None when intact."""
    if not path.is_file():
        return "missing"
    try:
        actual = hash_file(path, record.algorithm)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if actual.size < record.size:
        return f"truncated ({actual.size} of {record.size} bytes)"
    if actual.size > record.size:
        return f"altered ({actual.size} bytes, the manifest says {record.size})"
    if actual.digest != record.digest:
        return f"altered ({record.algorithm.value} differs)"
    return None


def verify(step_dir: Path, files: Mapping[str, FileRecord]) -> list[str]:
    """Every problem, one line each: missing, truncated, grown or altered (hash differs) files."""
    problems = []
    for name, record in sorted(files.items()):
        problem = check_content(Path(step_dir) / name, record)
        if problem is not None:
            problems.append(f"{name}: {problem}")
    return problems


def listed_size(files: Mapping[str, FileRecord], names: Iterable[str]) -> int:
    return sum(files[n].size for n in names)
