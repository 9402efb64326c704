"""Which samples an evaluation uses: held out from training, a fixed subset chosen by seed.

Held out means the sample's bytes are not in the training shards: a sample's
identity is its (CRC-32, length) in the manifest index, so the same clip
prepared into another directory is still recognised, while a different clip
with the same key (``clip_000000`` of another synthetic seed) is not. When
the training manifest cannot be read, every sample counts as held out (the
caller warns).

The subset: the first ``num`` positions of a permutation seeded by
``eval.seed``, in manifest order, so the CLI and the training hook pick the
same samples for the same settings, whatever the number of ranks.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Set, Tuple

import numpy as np


def training_identities(manifest) -> Set[Tuple[int, int]]:
    return {(ref.crc, ref.length) for ref in manifest.samples()}


def held_out(identities: Iterable[Tuple[int, int]], training: Optional[Set[Tuple[int, int]]]) -> List[int]:
    """Indices of ``identities`` (in order) that are not training samples."""
    return [i for i, identity in enumerate(identities) if training is None or identity not in training]


def select(candidates: List[int], num: int, seed: int) -> List[int]:
    """``num`` of ``candidates`` (all when num is 0 or larger), drawn by ``seed``, in their original order."""
    if num <= 0 or num >= len(candidates):
        return list(candidates)
    order = np.random.Generator(np.random.PCG64(seed)).permutation(len(candidates))
    return [candidates[i] for i in sorted(order[:num])]
