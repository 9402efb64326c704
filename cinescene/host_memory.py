"""Host memory, the one reader of /proc for it: this process's resident memory now and at its peak
(training's metrics, the figures export, resharding and the checkpoint benchmark print) and the memory
a new allocation may still take (the context cache's offload check).

On Linux the kernel's high-water mark (``VmHWM``) can be reset by writing 5
to ``/proc/self/clear_refs``, so a peak can be measured over one piece of
work rather than the process's life; elsewhere the life-time peak
(``ru_maxrss``) is the best there is, and :func:`reset_peak` says so.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MEMINFO = Path("/proc/meminfo")


def reset_peak() -> bool:
    """Start a new peak measurement; False when only the process's life-time peak is available."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _kb_field(path: Path, field: str) -> int | None:
    """A ``field:  N kB`` line of a /proc file in bytes; None where /proc is not available."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    """Resident set size now (0 where /proc is not available)."""
    rss = _kb_field(_STATUS, "VmRSS")
    return 0 if rss is None else rss


def peak_rss_bytes() -> int:
    """Peak resident set size since :func:`reset_peak` (or since the process started)."""
    peak = _kb_field(_STATUS, "VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def available_bytes() -> int | None:
    """Host memory a new allocation may take (Linux MemAvailable), or None when it cannot be read."""
    available = _kb_field(_MEMINFO, "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1000
    return f"{count:.2f} TB"
