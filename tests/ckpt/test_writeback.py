"""Checkpoint files stream to the disk while written and leave the page cache behind them
(cinescene/ckpt/writeback.py), and are written exactly as without it where the file system refuses."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest
import xxhash

from cinescene.ckpt import manifest, writeback

CHUNK = 1 << 20


def cached_bytes(path) -> int:
    """How much of the file is in the page cache (mincore over an untouched private mapping)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(
            handle.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    view = ctypes.c_char.from_buffer(mapped)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        status = libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), vector)
        assert status == 0, os.strerror(ctypes.get_errno())
        return sum(v & 1 for v in vector) * mmap.PAGESIZE
    finally:
        del view
        mapped.close()


def drops_clean_pages(directory) -> bool:
    """Whether this file system lets POSIX_FADV_DONTNEED drop a file's clean pages (a tmpfs does not)."""
    probe = directory / "probe"
    with open(probe, "wb") as handle:
        handle.write(b"x" * 4 * mmap.PAGESIZE)
        handle.flush()
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    dropped = cached_bytes(probe) == 0
    probe.unlink()
    return dropped


def write_in_pieces(body: bytes, after_each=lambda: None):
    def write(writer):
        for start in range(0, len(body), 300_000):
            writer.write(body[start : start + 300_000])
            after_each()

    return write


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(manifest, "Writeback", lambda fd: writeback.Writeback(fd, CHUNK))


@pytest.mark.skipif(writeback._SYNC_FILE_RANGE is None, reason="sync_file_range is Linux's")
def test_a_file_streams_out_keeping_about_two_chunks_cached_and_none_after_its_fsync(tmp_path, small_chunks):
    if not drops_clean_pages(tmp_path):
        pytest.skip("this file system keeps what it stores in the page cache")
    body, path, cached = os.urandom(8 * CHUNK + 12345), tmp_path / "shard.pt", []
    record = manifest.write_hashed(path, write_in_pieces(body, lambda: cached.append(cached_bytes(path))))
    assert cached_bytes(path) == 0
    assert max(cached) <= 3 * CHUNK < len(body) / 2  # written plainly, all of it would sit there dirty
    assert record == manifest.FileRecord(len(body), xxhash.xxh3_128(body).hexdigest())
    assert path.read_bytes() == body


def test_where_the_file_system_refuses_the_file_is_written_plainly(tmp_path, small_chunks, monkeypatch):
    calls = []
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", lambda *args: calls.append(args) or -1)
    body, path = os.urandom(4 * CHUNK + 7), tmp_path / "shard.pt"
    record = manifest.write_hashed(path, write_in_pieces(body))
    assert len(calls) == 1  # refused once, never asked again for this file
    assert record == manifest.FileRecord(len(body), xxhash.xxh3_128(body).hexdigest())
    assert path.read_bytes() == body
