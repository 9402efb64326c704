"""Webdataset tar shards: a deterministic writer and a byte-range sample reader.

A shard is a plain tar in webdataset's layout (members ``<key>.<field>``,
one sample's members adjacent), readable by ``webdataset.WebDataset``. Headers
are fixed (mtime 0, uid/gid 0, mode 0644, no user names), so the same samples
give byte-identical shards. While writing we record each sample's byte range
(from its first header to the end of its last member's padding); the
manifest stores ``[key, offset, length, crc32]`` per sample, so the loader
can read any sample with one seek and detect a corrupt or truncated one.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from . import storage

BLOCK = 512


class SampleError(Exception):
    """A sample that cannot be used (truncated, corrupt, undecodable); the loader skips it."""


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _describe_array(dtype: np.dtype, shape) -> str:
    return f"{dtype.name} {tuple(shape)}"


def npy_array(data: bytes, name: str, expected: dict | None = None) -> np.ndarray:
    """Strictly parse one ``.npy`` member: the format's header and raw data, nothing else.

    ``np.load`` would take a zip for an ``.npz`` (a member starting with ``PK``)
    and fail on an empty one with EOFError; here every malformed member is a
    SampleError. ``expected`` (the manifest's ``{"shape", "dtype"}``, -1 for a
    variable first dimension) is checked from the header, before any data is
    touched, so a wrong-shaped array never reaches a batch.
    """
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(buffer)
    except Exception as exc:  # untrusted bytes: any failure of the header parser means "not an array"
        what = (
            "empty"
            if not data
            else f"not a .npy array ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
        )
        raise SampleError(f"{name} is {what}") from None
    if dtype.hasobject:
        raise SampleError(f"{name} holds Python objects ({dtype}), not numbers")
    if expected is not None:
        want = list(expected["shape"])
        if (
            np.dtype(expected["dtype"]) != dtype
            or len(want) != len(shape)
            or any(w not in (-1, s) for w, s in zip(want, shape))
        ):
            raise SampleError(
                f"{name} is {_describe_array(dtype, shape)}, the manifest says "
                f"{_describe_array(np.dtype(expected['dtype']), want)}"
            )
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - buffer.tell() != count * dtype.itemsize:
        raise SampleError(
            f"{name} holds {len(data) - buffer.tell()} data bytes, its header "
            f"({_describe_array(dtype, shape)}) needs {count * dtype.itemsize}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=buffer.tell())
    return array.reshape(shape, order="F" if fortran_order else "C").copy()


def npy_field(
    fields: dict[str, bytes], name: str, optional: bool = False, expected: dict | None = None
) -> np.ndarray | None:
    """The array a sample stores as ``name`` (see :func:`npy_bytes`, :func:`npy_array`); None for an absent
    optional field. A missing required field or a malformed one raises SampleError."""
    if name not in fields:
        if optional:
            return None
        raise SampleError(f"missing field {name}")
    return npy_array(fields[name], name, expected)


class ShardWriter:
    """Writes one shard to ``<path>.tmp``; :meth:`close` renames it and returns its record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.ranges: list[tuple[str, int, int]] = []

    @property
    def size(self) -> int:
        return self._tar.offset

    def __len__(self) -> int:
        return len(self.ranges)

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset splits on them)")
        start = self._tar.offset
        for name in sorted(fields):
            data = fields[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.ranges.append((key, start, self._tar.offset - start))

    def close(self) -> dict:
        """Finish the tar, fsync, rename into place; returns the shard's manifest record."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = hashlib.sha256()
        samples = []
        with open(self.tmp, "rb") as f:
            data = f.read()
        digest.update(data)
        for key, offset, length in self.ranges:
            samples.append([key, offset, length, zlib.crc32(data[offset : offset + length])])
        os.replace(self.tmp, self.path)
        return {
            "name": self.path.name,
            "bytes": len(data),
            "sha256": digest.hexdigest(),
            "num_samples": len(samples),
            "samples": samples,
        }

    def abort(self) -> None:
        try:
            self._tar.close()
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def file_sha256(path) -> str:
    """The SHA-256 of a local file or an object (streamed)."""
    if isinstance(path, storage.ObjectPath):
        return storage.object_store().sha256(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_members(blob: bytes, key: str) -> dict[str, bytes]:
    """Split one sample's tar bytes into ``{field: data}``; raises SampleError on any inconsistency."""
    fields, pos = {}, 0
    while pos + BLOCK <= len(blob):
        header = blob[pos : pos + BLOCK]
        if header == b"\0" * BLOCK:
            break
        stored = header[148:156].split(b"\0")[0].strip()
        computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
        try:
            if int(stored or b"-1", 8) != computed:
                raise SampleError("bad tar header checksum")
            size = int(header[124:136].split(b"\0")[0].strip() or b"0", 8)
        except ValueError:
            raise SampleError("unreadable tar header") from None
        name = header[:100].split(b"\0")[0].decode("utf-8", "replace")
        prefix, dot, field = name.partition(".")
        if prefix != key or not dot:
            raise SampleError(f"member {name!r} does not belong to sample {key!r}")
        start = pos + BLOCK
        if start + size > len(blob):
            raise SampleError(f"member {name!r} is truncated")
        fields[field] = blob[start : start + size]
        pos = start + (size + BLOCK - 1) // BLOCK * BLOCK
    if not fields:
        raise SampleError("no members")
    return fields


class ShardReader:
    """Reads samples by byte range, keeping a few shard files open (per process); shards on object storage
    are read with one ranged GET per sample."""

    def __init__(self, max_open: int = 8, retry: storage.ObjectStoreConfig | None = None):
        self.max_open = max_open
        self.retry = retry  # transient errors of object storage
        self._files: dict[Path, object] = {}

    def read(self, path, key: str, offset: int, length: int, crc: int) -> dict[str, bytes]:
        """The sample's fields; ``path`` is a local shard or an object (one ranged GET, see storage)."""
        if isinstance(path, storage.ObjectPath):
            try:
                blob = storage.object_store(self.retry).read_range(path, offset, length)
            except FileNotFoundError:
                raise SampleError("missing object") from None
            return self._check(blob, key, offset, length, crc)
        try:
            handle = self._files.get(path)
            if handle is None:
                if len(self._files) >= self.max_open:
                    self._files.pop(next(iter(self._files))).close()
                handle = self._files[path] = open(path, "rb")
            handle.seek(offset)
            blob = handle.read(length)
        except OSError as exc:
            raise SampleError(f"unreadable ({exc.strerror or exc})") from None
        return self._check(blob, key, offset, length, crc)

    @staticmethod
    def _check(blob: bytes, key: str, offset: int, length: int, crc: int) -> dict[str, bytes]:
        if len(blob) != length:
            raise SampleError(
                f"truncated shard (sample needs bytes {offset}-{offset + length}, file ends earlier)"
            )
        if zlib.crc32(blob) != crc:
            raise SampleError("checksum mismatch (corrupt bytes)")
        return parse_members(blob, key)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
