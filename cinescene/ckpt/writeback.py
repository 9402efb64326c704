"""Streaming a checkpoint file to disk while it is written, and out of the page cache behind it.

A save writes gigabytes per rank. Written plainly, all of it sits dirty in
the page cache until the closing ``fsync`` (which then waits for all of it at
once), and afterwards it stays cached, pushing out what training reads (its
data shards). :class:`Writeback` follows a file's writes instead: each full
64 MiB chunk is handed to the disk as soon as it is written
(``sync_file_range(WRITE)``), the chunk before it is waited for and dropped
from the cache (``POSIX_FADV_DONTNEED``), and the file's pages are dropped
after its ``fsync``. The page cache then holds about two chunks per file,
and the memory those pages use is recycled at once instead of being taken
fresh from the kernel for every chunk. On the development VM this made a
1 GB save steady at 0.52-0.66 s where plain writes took 0.59-1.66 s
(BENCHMARKS.md, "Checkpoints").

Durability does not depend on it: ``sync_file_range`` guarantees nothing,
and the ``fsync`` after the last write still makes the file durable. Where it
is unavailable (not Linux) or fails for a file (a file system without it),
that file is written as before; a write error still surfaces from ``write``
or ``fsync``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CHUNK = 64 << 20
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4  # SYNC_FILE_RANGE_* (linux/fs.h)


def _sync_file_range():
    if not os.uname().sysname == "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()


class Writeback:
    """Follows the writes to one open file (``fd``) from offset 0; :meth:`written_up_to` after each write."""

    def __init__(self, fd: int, chunk: int = CHUNK):
        self.fd = fd
        self.chunk = chunk
        self.started = 0  # handed to the disk up to here
        self.dropped = 0  # waited for and dropped from the cache up to here
        self.active = _SYNC_FILE_RANGE is not None

    def written_up_to(self, size: int) -> None:
        """The file now holds its first ``size`` bytes."""
        while self.active and size - self.started >= self.chunk:
            self._call(self.started, _WRITE)
            if self.started - self.dropped >= self.chunk:
                self._call(self.dropped, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
                self._drop(self.dropped, self.chunk)
                self.dropped += self.chunk
            self.started += self.chunk

    def synced(self) -> None:
        """After the file's ``fsync``: none of its pages are dirty any more; drop them all."""
        if self.active:
            self._drop(0, 0)

    def _call(self, offset: int, flags: int) -> None:
        if _SYNC_FILE_RANGE(self.fd, offset, self.chunk, flags) != 0:
            self.active = False  # this file system does not do it: the closing fsync does all

    def _drop(self, offset: int, length: int) -> None:
        try:
            os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            self.active = False
