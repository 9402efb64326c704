"""Tile sizes and launch settings: fixed small tiles under the interpreter, autotuned on Hopper.

Nothing here imports triton at module level, so ``cinescene.kernels.attention``
stays importable (and cheap) on machines without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

#: Head dims the kernels compile for (``tl.arange`` needs a power of two; 64 and
#: 128 are the production ones: VGGT and Wan). Others fall back to SDPA.
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)

#: Sequence-length keys of the autotuner are bucketed to powers of two, so a
#: batch with a few more scene images reuses the tuning of its neighbours.
MIN_SEQLEN_BUCKET = 256


def interpreting() -> bool:
    """True when triton runs kernels through its numpy interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def seqlen_bucket(length: int) -> int:
    bucket = MIN_SEQLEN_BUCKET
    while bucket < length:
        bucket *= 2
    return bucket


@dataclass(frozen=True)
class Tiles:
    """One launch configuration. ``block_m`` tiles queries, ``block_n`` keys, in every kernel."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 1


# The interpreter runs one program at a time in numpy: 16 is the smallest tile
# ``tl.dot`` accepts, and small tiles make tiny test shapes span several blocks
# (so tail blocks, straddling blocks and skipped blocks all occur).
INTERPRETER_TILES = Tiles(16, 16)

# Hopper candidates (H100: 228 KB shared memory per SM, wgmma wants M a
# multiple of 64 per warpgroup). Forward: a 128-row query tile stays in
# registers across the key loop, keys stream through a 2-3 stage pipeline.
# The dK/dV kernel owns a key tile and streams narrow query tiles; the dQ
# kernel the opposite: the owned tile is the wide one, the streamed one
# narrow, to keep two fp32 accumulators plus the streamed operands on chip.
# Candidates that ptxas (sm_90a, via ``hopper_compile --all-tiles``) shows spilling at
# most a few bytes; 128x64 with 4 warps at D=128 spills hundreds and is left out.
_GPU_TILES: dict[tuple[str, str], list[Tiles]] = {
    ("forward", "d128"): [
        Tiles(128, 64, 8, 3),
        Tiles(128, 128, 8, 3),
        Tiles(64, 64, 4, 4),
        Tiles(128, 32, 4, 4),
    ],
    ("forward", "small"): [
        Tiles(128, 64, 4, 4),
        Tiles(128, 128, 8, 3),
        Tiles(64, 64, 4, 4),
        Tiles(128, 32, 4, 3),
    ],
    # Two fp32 (BLOCK_N, D) accumulators live in registers for the whole loop: at D=128 a
    # 128-key tile needs 8 warps (128 accumulator registers per thread), 64 keys fit 4 warps.
    ("dkdv", "d128"): [Tiles(32, 128, 8, 3), Tiles(64, 128, 8, 3), Tiles(32, 64, 4, 3), Tiles(64, 64, 4, 3)],
    ("dkdv", "small"): [Tiles(64, 128, 8, 3), Tiles(32, 128, 4, 5), Tiles(64, 64, 4, 4), Tiles(32, 64, 4, 3)],
    # The dQ program holds q, dO (16-bit) and dQ (fp32) tiles of BLOCK_M rows: 8 warps at 128 rows.
    ("dq", "d128"): [Tiles(128, 64, 8, 3), Tiles(128, 32, 8, 3), Tiles(64, 64, 4, 3), Tiles(64, 32, 4, 4)],
    ("dq", "small"): [Tiles(128, 32, 4, 5), Tiles(128, 64, 8, 3), Tiles(64, 64, 4, 4), Tiles(64, 32, 4, 3)],
}


def gpu_tiles(kernel: str, head_dim: int) -> Sequence[Tiles]:
    return _GPU_TILES[(kernel, "d128" if head_dim >= 128 else "small")]


_AUTOTUNED: dict[tuple[int, str, int], object] = {}


def autotuned(kernel, name: str, head_dim: int):
    """``kernel`` wrapped in ``triton.autotune`` over the Hopper candidates (cached; GPU only).

    Key: head dim, mask and layout flags, bucketed lengths (and, implicitly,
    the tensor dtypes). Every kernel is idempotent, so the autotuner may rerun
    it freely. Only called when a GPU runs the kernels: the benchmarker needs
    the CUDA driver.
    """
    cache_key = (id(kernel), name, head_dim)
    if cache_key not in _AUTOTUNED:
        import triton

        configs = [
            triton.Config(
                {"BLOCK_M": t.block_m, "BLOCK_N": t.block_n}, num_warps=t.num_warps, num_stages=t.num_stages
            )
            for t in gpu_tiles(name, head_dim)
        ]
        _AUTOTUNED[cache_key] = triton.autotune(
            configs=configs,
            key=["seqlen_bucket_q", "seqlen_bucket_k", "HEAD_DIM", "VARLEN", "READONLY"],
        )(kernel)
    return _AUTOTUNED[cache_key]


KERNEL_NAMES = ("forward", "dkdv", "dq")
_FIXED_TILES: dict[str, Tiles] = {}


@contextmanager
def fixed_tiles(**tiles: Tiles) -> Iterator[None]:
    """While active, the kernels named (``forward=``, ``dkdv=``, ``dq=``) launch with these tiles.

    Calls through the public API (custom op, autograd) pick them up, so the
    interpreter can run whole forward/backward passes with the non-square
    tiles a GPU uses (e.g. forward 32x16, dK/dV 16x32) instead of its 16x16.
    """
    unknown = set(tiles) - set(KERNEL_NAMES)
    if unknown:
        raise ValueError(f"fixed_tiles: unknown kernels {sorted(unknown)}; expected {KERNEL_NAMES}")
    previous = dict(_FIXED_TILES)
    _FIXED_TILES.update(tiles)
    try:
        yield
    finally:
        _FIXED_TILES.clear()
        _FIXED_TILES.update(previous)


def launch(
    kernel, name: str, grid_blocks, args: dict, *, head_dim: int, tiles: Tiles | None = None
) -> Tiles | None:
    """Run ``kernel`` over ``grid_blocks(BLOCK_M, BLOCK_N)``; returns the tiles used (None when autotuned).

    Explicit ``tiles`` (tests, the block-count probe), tiles fixed by
    :func:`fixed_tiles`, or interpreted kernels use a fixed configuration; a GPU
    without any of those goes through the autotuner.
    """
    tiles = tiles or _FIXED_TILES.get(name)
    if tiles is None and type(kernel).__name__ != "InterpretedFunction":
        tuned = autotuned(kernel, name, head_dim)
        tuned[lambda meta: grid_blocks(meta["BLOCK_M"], meta["BLOCK_N"])](**args)
        return None
    tiles = tiles or INTERPRETER_TILES
    kernel[grid_blocks(tiles.block_m, tiles.block_n)](
        **args,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    return tiles
