"""Correctness sweep of the fused kernels against the float64 reference (forward and gradients).

On a CPU this runs through the Triton interpreter at tiny shapes (fp16,
fp32, and bf16 with the interpreter's fp32 upcast of dots); on a GPU the same
cases run natively. ``python -m cinescene.kernels.attention.check`` prints a
table of max errors and exits 0 only if every case is within tolerance.
``TRITON_INTERPRET=1`` must be set before this module is imported on a CPU:
:func:`main` is meant to be the entry of a fresh process
(``cinescene bench attention --check`` starts it as one).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .config import Tiles, fixed_tiles

#: Max |kernel - reference| / max(1, max |reference|) per output and gradient. fp32 is
#: exact up to summation order; fp16/bf16 are the rounding of inputs, P and dS to 10/7 bits.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    """One call: padded (seqlen_q/seqlen_k) or packed (lengths_q/lengths_k, per-sequence context_starts)."""

    dtype: torch.dtype
    heads: int = 1
    head_dim: int = 64
    batch: int = 1
    seqlen_q: int = 0
    seqlen_k: int = 0
    mask: str = "full"
    num_video: int | None = None
    lengths_q: tuple[int, ...] = ()
    lengths_k: tuple[int, ...] = ()
    context_starts: tuple[int, ...] | None = None
    grads: bool = True
    #: (forward, dK/dV, dQ) tiles instead of the defaults (interpreter: 16x16), e.g. the non-square
    #: shapes the GPU candidates have, scaled down.
    tiles: tuple[Tiles, Tiles, Tiles] | None = None

    @property
    def varlen(self) -> bool:
        return bool(self.lengths_q)

    @property
    def label(self) -> str:
        dtype = {v: k for k, v in DTYPE_NAMES.items()}[self.dtype]
        if self.varlen:
            shape = f"varlen q{list(self.lengths_q)} k{list(self.lengths_k)}"
            mask = f"ctx{list(self.context_starts)}" if self.context_starts is not None else "full"
        else:
            shape = f"B{self.batch} q{self.seqlen_q} k{self.seqlen_k}"
            mask = f"readonly@{self.num_video}" if self.mask == "context_readonly" else "full"
        tiles = (
            "" if self.tiles is None else " tiles " + "/".join(f"{t.block_m}x{t.block_n}" for t in self.tiles)
        )
        return f"{dtype} H{self.heads} d{self.head_dim} {shape} {mask}{tiles}"

    def tile_overrides(self) -> dict[str, Tiles]:
        return {} if self.tiles is None else dict(zip(("forward", "dkdv", "dq"), self.tiles))


@dataclass
class Result:
    case: Case
    errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        tol = TOLERANCE[self.case.dtype]
        return bool(self.errors) and all(err <= tol for err in self.errors.values())


def _scaled_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference).abs().max() / max(1.0, float(reference.abs().max())))


def _inputs(case: Case, device, generator: torch.Generator):
    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float32).to(
            device=device, dtype=case.dtype
        )

    if case.varlen:
        total_q, total_k = sum(case.lengths_q), sum(case.lengths_k)
        return (
            rand(total_q, case.heads, case.head_dim),
            rand(total_k, case.heads, case.head_dim),
            rand(total_k, case.heads, case.head_dim),
            rand(total_q, case.heads, case.head_dim),
        )
    return (
        rand(case.batch, case.seqlen_q, case.heads, case.head_dim),
        rand(case.batch, case.seqlen_k, case.heads, case.head_dim),
        rand(case.batch, case.seqlen_k, case.heads, case.head_dim),
        rand(case.batch, case.seqlen_q, case.heads, case.head_dim),
    )


def _cu_seqlens(lengths: Sequence[int], device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return cu.to(device)


def run_case(case: Case, device="cpu", seed: int = 0) -> Result:
    """Run ``case`` through the public API and compare out (and dq, dk, dv) with the float64 reference."""
    from . import fused_attention, fused_attention_varlen
    from .reference import reference_attention, reference_attention_varlen

    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = _inputs(case, device, generator)
    kernel_in = [t.clone().requires_grad_(case.grads) for t in (q, k, v)]
    ref_in = [t.detach().double().cpu().requires_grad_(case.grads) for t in (q, k, v)]
    start = time.perf_counter()
    with fixed_tiles(**case.tile_overrides()):
        if case.varlen:
            cu_q, cu_k = _cu_seqlens(case.lengths_q, device), _cu_seqlens(case.lengths_k, device)
            out = fused_attention_varlen(
                *kernel_in,
                cu_q,
                cu_k,
                max(case.lengths_q),
                max(case.lengths_k),
                context_start=case.context_starts,
            )
            ref = reference_attention_varlen(*ref_in, cu_q.cpu(), cu_k.cpu(), case.context_starts)
        else:
            out = fused_attention(*kernel_in, num_video=case.num_video, mask=case.mask)
            ref = reference_attention(*ref_in, num_video=case.num_video, mask=case.mask)
        if case.grads:
            out.backward(grad)
        if out.is_cuda:
            torch.cuda.synchronize()
    result = Result(case, seconds=time.perf_counter() - start)
    result.errors["out"] = _scaled_error(out.detach().cpu(), ref.detach())
    if case.grads:
        ref.backward(grad.double().cpu())
        for name, got, want in zip(("dq", "dk", "dv"), kernel_in, ref_in):
            result.errors[name] = _scaled_error(got.grad.cpu(), want.grad)
    return result


#: The GPU candidates' shapes at a quarter scale: forward and dQ own a wide query tile and stream narrow
#: key tiles (128x64), dK/dV owns a wide key tile and streams narrow query tiles (32x128).
GPU_SHAPED_TILES = (Tiles(32, 16), Tiles(16, 32), Tiles(32, 16))
#: The opposite orientation, so every block-range bound is exercised with BLOCK_M < BLOCK_N and > BLOCK_N.
TRANSPOSED_TILES = (Tiles(16, 32), Tiles(32, 16), Tiles(16, 32))


def default_cases(
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16),
) -> list[Case]:
    """The CI sweep: both head dims, odd and unequal lengths, both masks (aligned, straddling and
    tail-block context starts), packed sequences with different context sizes (also at d=128), square
    and non-square tiles; gradients throughout."""
    cases = []
    for dtype in dtypes:
        cases += [
            Case(dtype, heads=2, head_dim=64, seqlen_q=37, seqlen_k=37),
            Case(dtype, head_dim=128, seqlen_q=33, seqlen_k=33),
            Case(dtype, head_dim=64, seqlen_q=1, seqlen_k=77),
            Case(dtype, head_dim=32, batch=2, seqlen_q=77, seqlen_k=20),
            Case(dtype, head_dim=64, seqlen_q=77, seqlen_k=77, mask="context_readonly", num_video=37),
            Case(dtype, head_dim=128, seqlen_q=48, seqlen_k=48, mask="context_readonly", num_video=32),
            Case(
                dtype, heads=2, head_dim=32, seqlen_q=77, seqlen_k=77, mask="context_readonly", num_video=70
            ),
            Case(
                dtype, head_dim=64, lengths_q=(17, 40, 5), lengths_k=(17, 40, 5), context_starts=(10, 33, 5)
            ),
            Case(dtype, head_dim=32, lengths_q=(9, 1, 30), lengths_k=(21, 16, 3)),
            Case(dtype, head_dim=128, lengths_q=(40, 17), lengths_k=(40, 17), context_starts=(24, 9)),
            # Context start 40 straddles both a 16- and a 32-wide block.
            Case(
                dtype,
                head_dim=64,
                seqlen_q=77,
                seqlen_k=77,
                mask="context_readonly",
                num_video=40,
                tiles=GPU_SHAPED_TILES,
            ),
            # Starts aligned to 16 but not 32, a sequence without context, one straddling.
            Case(
                dtype,
                head_dim=32,
                lengths_q=(45, 20, 70),
                lengths_k=(45, 20, 70),
                context_starts=(16, 20, 33),
                tiles=TRANSPOSED_TILES,
            ),
        ]
    return cases


def format_table(results: Sequence[Result]) -> str:
    width = max([len("case")] + [len(r.case.label) for r in results])
    lines = [f"{'case':{width}} {'out':>9} {'dq':>9} {'dk':>9} {'dv':>9} {'tol':>7} {'s':>5}  ok"]
    for r in results:
        errs = " ".join(f"{r.errors.get(n, float('nan')):9.2e}" for n in ("out", "dq", "dk", "dv"))
        lines.append(
            f"{r.case.label:{width}} {errs} {TOLERANCE[r.case.dtype]:7.0e} {r.seconds:5.1f}  "
            f"{'PASS' if r.passed else 'FAIL'}"
        )
    return "\n".join(lines)


def summarize(results: Sequence[Result]) -> str:
    """Max error per dtype and mask kind, the numbers a report quotes."""
    groups: dict[tuple[str, str], float] = {}
    for r in results:
        dtype = {v: k for k, v in DTYPE_NAMES.items()}[r.case.dtype]
        kind = ("varlen-" if r.case.varlen else "") + (
            "readonly" if r.case.mask == "context_readonly" or r.case.context_starts is not None else "full"
        )
        groups[(dtype, kind)] = max(groups.get((dtype, kind), 0.0), max(r.errors.values()))
    return "\n".join(
        f"max scaled error {dtype:4} {kind:16} {err:.2e}" for (dtype, kind), err in sorted(groups.items())
    )


def main(argv=None) -> int:
    from .api import is_available

    parser = argparse.ArgumentParser(description="fused attention correctness sweep")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not is_available(device):
        print(
            "attention check: the kernels cannot run here (no CUDA GPU and TRITON_INTERPRET is not set)",
            file=sys.stderr,
        )
        return 1
    cases = default_cases([DTYPE_NAMES[name] for name in args.dtypes.split(",")])
    mode = "CUDA" if device == "cuda" else "CPU, Triton interpreter"
    print(f"fused attention correctness sweep: {len(cases)} cases on {mode}", flush=True)
    results, start = [], time.perf_counter()
    for case in cases:
        try:
            results.append(run_case(case, device))
        except Exception as exc:  # a crash is a failed case, reported in the table
            print(f"{case.label}: {type(exc).__name__}: {exc}", file=sys.stderr)
            results.append(Result(case))
    print(format_table(results))
    print(summarize([r for r in results if r.errors]))
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed}/{len(results)} passed in {time.perf_counter() - start:.1f} s")
    if args.json:
        import json

        with open(args.json, "w") as handle:
            json.dump(
                [
                    {"case": r.case.label, "errors": r.errors, "passed": r.passed, "seconds": r.seconds}
                    for r in results
                ],
                handle,
                indent=1,
            )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
