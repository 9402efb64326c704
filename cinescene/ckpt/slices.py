"""Slices of a flattened tensor saved by several ranks (the EMA's), checked before anything is allocated.

Each rank file holds, per parameter, ``offset`` and ``length`` into the
flattened parameter and the stored values. A file can lie: slices that
overlap leave other elements unwritten (uninitialised memory an export would
write out), slices past the end would be cut or fail late, and a length the
stored tensor does not hold would read past it. :func:`cover` checks a set of
slices against the range that must be filled, so a reader allocates only after
the stored elements are known to fill it exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Piece:
    offset: int
    length: int
    value: Any  # the stored values (a tensor or a lazy stored tensor), at least ``length`` elements
    source: str  # where it was read from, for the error


def _count(value: Any) -> int | None:
    try:
        return int(value.numel())
    except Exception:
        return None


def piece(entry: Any, source: str) -> Piece | str:
    """A slice entry ({offset, length, value}) as a :class:`Piece`, or what is wrong with it."""
    if not isinstance(entry, dict):
        return f"{source}: not a slice entry"
    offset, length, value = entry.get("offset"), entry.get("length"), entry.get("value")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)):
        return f"{source}: offset {offset!r:.20} / length {length!r:.20} are not integers >= 0"
    stored = _count(value)
    if stored is None or stored < length:
        return f"{source}: holds {stored} stored elements, fewer than its length {length}"
    return Piece(offset, length, value, source)


def cover(pieces: Iterable[Piece], start: int, stop: int) -> list[tuple[Piece, int, int]] | str:
    """The parts of ``pieces`` inside [start, stop) as (piece, from, to) in element positions, when they fill
    it exactly once; otherwise a phrase saying how they do not (overlap, gap)."""
    parts = []
    for p in pieces:
        low, high = max(p.offset, start), min(p.offset + p.length, stop)
        if low < high:
            parts.append((p, low, high))
    parts.sort(key=lambda part: part[1])
    position = start
    for p, low, high in parts:
        if low < position:
            return f"{p.source} overlaps another slice at element {low}"
        if low > position:
            return f"elements {position}..{low - 1} are in no slice"
        position = high
    if position < stop:
        return f"elements {position}..{stop - 1} are in no slice"
    return parts
