"""The per-save file manifest: every file of a step directory with its size and SHA-256.

Hashes are computed while the bytes are written (:class:`HashingWriter`
wraps the open file; ``torch.save`` and our own writers go through it), never
by reading the files back. Each rank records the files it wrote in a part
file; rank 0 merges the parts into ``manifest.json`` before the directory is
renamed into place. Resume re-hashes every file before it loads anything
(:func:`check_content`, the ranks sharing the files; ``checkpoint.verify``),
as ``cinescene ckpt info --verify`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import DamagedCheckpointError

MANIFEST = "manifest.json"
PART_PREFIX = ".manifest-part-"
FORMAT = 1
_HASH_CHUNK = 1 << 24
_PARALLEL_MIN = 1 << 20  # writes from 1 MiB on are hashed on a second thread while they are written


@dataclass(frozen=True)
class FileRecord:
    size: int
    sha256: str


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it.

    A large write is hashed on a second thread while this one writes it (both release the GIL), so the
    save costs about the slower of the two, not their sum; each write returns only when both are done
    with its buffer (the caller may reuse it), which also keeps the hash in write order.
    """

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.hasher = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # the first failed write (torch.save reports only its own error)
        self._pool: ThreadPoolExecutor | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            if len(view) < _PARALLEL_MIN:
                self.hasher.update(view)
                written = self.handle.write(view)
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
                hashed = self._pool.submit(self.hasher.update, view)
                try:
                    written = self.handle.write(view)
                finally:
                    hashed.result()
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.size += len(view)
        return written

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        """Stop the hashing thread (if one started)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def record(self) -> FileRecord:
        self.close()
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
    except Exception as exc:
        if writer is not None and writer.error is not None and writer.error is not exc:
            raise writer.error from None
        raise
    finally:
        if writer is not None:
            writer.close()
    return writer.record()


def write_bytes(path: Path, data: bytes) -> FileRecord:
    return write_hashed(path, lambda writer: writer.write(data))


def hash_file(path: Path) -> FileRecord:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(size, digest.hexdigest())


# ------------------------------------------------------------------------ parts
def part_name(rank: int) -> str:
    return f"{PART_PREFIX}rank_{rank:05d}.json"


def write_part(step_dir: Path, rank: int, records: Mapping[str, FileRecord]) -> None:
    """This rank's written files (paths relative to ``step_dir``)."""
    body = {name: {"size": r.size, "sha256": r.sha256} for name, r in sorted(records.items())}
    path = step_dir / part_name(rank)
    with open(path, "w") as handle:
        json.dump(body, handle)
        handle.flush()
        os.fsync(handle.fileno())


def merge_parts(step_dir: Path, extra: Mapping[str, FileRecord]) -> dict[str, FileRecord]:
    """Rank 0: every part plus ``extra`` (its own late files), parts removed; write ``manifest.json``."""
    files: dict[str, FileRecord] = {}
    for part in sorted(step_dir.glob(f"{PART_PREFIX}*")):
        files.update(
            {
                name: FileRecord(int(r["size"]), str(r["sha256"]))
                for name, r in json.loads(part.read_text()).items()
            }
        )
        part.unlink()
    files.update(extra)
    body = {
        "format": FORMAT,
        "files": {name: {"size": r.size, "sha256": r.sha256} for name, r in sorted(files.items())},
    }
    write_bytes(step_dir / MANIFEST, (json.dumps(body, indent=1) + "\n").encode())
    return files


# ---------------------------------------------------------------------- reading
def read_manifest(step_dir: Path) -> dict[str, FileRecord] | None:
    """The manifest's files, or None when the directory has no manifest; a corrupt one is damage."""
    path = Path(step_dir) / MANIFEST
    try:
        body = json.loads(path.read_bytes().decode("utf-8"))
        files = body["files"]
        records = {str(name): FileRecord(int(r["size"]), str(r["sha256"])) for name, r in files.items()}
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
        actual = hash_file(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if actual.size < record.size:
        return f"truncated ({actual.size} of {record.size} bytes)"
    if actual.size > record.size:
        return f"altered ({actual.size} bytes, the manifest says {record.size})"
    if actual.sha256 != record.sha256:
        return "altered (sha256 differs)"
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
