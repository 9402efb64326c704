"""The global sample order: a pure function of (seed, epoch, manifest), independent of world size.

Global position ``g`` (0, 1, 2, ... counting every sample any rank has
consumed) maps to epoch ``g // N`` and slot ``g % N`` of that epoch's order.
Because nothing depends on the number of ranks, a run resumed at another
world size continues the very same sequence.

Orders (``data.shuffle``):

* ``global`` -- a seeded permutation of all N samples per epoch: the best
  mixing. Reads jump between shards, which costs one seek per sample: cheap for
  multi-megabyte latent samples on a parallel or local file system.
* ``block`` -- shards in a seeded order per epoch, samples permuted within
  consecutive blocks of ``data.shuffle_buffer``: reads stay within one or two
  shards at a time (object stores, slow disks), mixing is local. This is the
  deterministic, resumable counterpart of webdataset's shuffle buffer.
* ``none`` -- manifest order (evaluation, debugging).

Permutations come from sorting splitmix64 hashes, not from numpy's RNG,
whose streams may change between numpy versions: an old checkpoint resumes
the same order after an upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ORDERS = ("global", "block", "none")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hashed_key(*salt: int) -> np.uint64:
    """One 64-bit hash of the integers in ``salt`` (order matters)."""
    key = np.uint64(0)
    with np.errstate(over="ignore"):
        for part in salt:
            key = mix64(np.uint64(key) * _GOLDEN + np.uint64(part & 0xFFFFFFFFFFFFFFFF))
    return np.uint64(key)


def hashed_permutation(count: int, *salt: int) -> np.ndarray:
    """A permutation of range(count) determined by the integers in ``salt``."""
    with np.errstate(over="ignore"):
        keys = mix64(np.arange(count, dtype=np.uint64) + hashed_key(*salt) * _GOLDEN)
    return np.argsort(keys, kind="stable")


SALT_ORDER, SALT_SHARDS, SALT_BLOCK, SALT_SCENE, SALT_SCENE_COUNT = 1, 2, 3, 4, 5


def epoch_order(
    shard_sizes: Sequence[int], seed: int, epoch: int, mode: str = "global", block: int = 64
) -> np.ndarray:
    """Manifest indices in the order epoch ``epoch`` visits them."""
    total = int(sum(shard_sizes))
    if mode == "none":
        return np.arange(total)
    if mode == "global":
        return hashed_permutation(total, seed, SALT_ORDER, epoch)
    if mode != "block":
        raise ValueError(f"unknown order {mode!r}; expected one of {ORDERS}")
    starts = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]]).astype(np.int64)
    shards = hashed_permutation(len(shard_sizes), seed, SALT_SHARDS, epoch)
    sequence = np.concatenate([np.arange(starts[s], starts[s] + shard_sizes[s]) for s in shards])
    block = max(1, int(block))
    for b, lo in enumerate(range(0, total, block)):
        chunk = sequence[lo : lo + block]
        sequence[lo : lo + block] = chunk[hashed_permutation(len(chunk), seed, SALT_BLOCK, epoch, b)]
    return sequence


def scene_permutation(seed: int, position: int, count: int) -> np.ndarray:
    """Order of the scene images for global sample ``position`` (training shuffle)."""
    return hashed_permutation(count, seed, SALT_SCENE, position)


def scene_count(seed: int, position: int, low: int, high: int) -> int:
    """How many scene images global sample ``position`` keeps: uniform over [low, high] inclusive.

    The modulo bias of reducing a 64-bit hash to a range of a few dozen values is below 1e-17.
    """
    if not 0 <= low <= high:
        raise ValueError(f"scene_count needs 0 <= low <= high, got low={low}, high={high}")
    return low + int(hashed_key(seed, SALT_SCENE_COUNT, position) % np.uint64(high - low + 1))


class GlobalOrder:
    """Maps global positions to manifest indices; keeps the last few epochs' orders."""

    def __init__(self, shard_sizes: Sequence[int], seed: int, mode: str = "global", block: int = 64):
        self.shard_sizes = [int(n) for n in shard_sizes]
        self.total = sum(self.shard_sizes)
        self.seed, self.mode, self.block = int(seed), mode, block
        self._cache: dict[int, np.ndarray] = {}

    def epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = epoch_order(self.shard_sizes, self.seed, epoch, self.mode, self.block)
        return self._cache[epoch]

    def index_at(self, position: int) -> int:
        epoch, slot = divmod(int(position), self.total)
        return int(self.epoch(epoch)[slot])
