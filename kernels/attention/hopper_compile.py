"""Ahead-of-time compile of every kernel variant for Hopper (sm_90a), no GPU needed.

Triton ships the NVIDIA backend and ptxas with its wheel, so a CPU machine can
lower the kernels all the way to a cubin: this catches GPU-only compile errors
(scalar types that the interpreter tolerates, shapes wgmma rejects) and
reports shared memory and register use per tile configuration, so that a
candidate that cannot fit an SM is known before a GPU session. It must run in
a process without ``TRITON_INTERPRET`` (the kernels must be ``JITFunction``s):
``python -m cinescene.kernels.attention.hopper_compile``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TENSOR_ARGS = {"q", "k", "v", "out", "grad_out", "grad_q", "grad_k", "grad_v"}
STAT_ARGS = {"lse", "delta"}
INDEX_ARGS = {"cu_seqlens_q", "cu_seqlens_k", "context_start", "block_counts"}
FLOAT_ARGS = {"qk_scale", "softmax_scale"}


@dataclass
class CompileReport:
    kernel: str
    variant: str
    tiles: str
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None
    mma: str = ""  # the tensor-core instruction the dots lowered to (wgmma on Hopper)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _signature(kernel, dtype: str, constexprs: dict):
    """Triton signature and 16-byte-divisibility attributes for ``kernel``'s arguments."""
    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name in TENSOR_ARGS:
            signature[name] = f"*{dtype}"
        elif name in STAT_ARGS:
            signature[name] = "*fp32"
        elif name in INDEX_ARGS:
            signature[name] = "*i32"
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
        if signature[name].startswith("*") or name.startswith("stride_"):
            # What the launcher specialises to at CineScene shapes: aligned pointers, strides % 16 == 0.
            if not name.endswith(("_h", "stride_lse_b", "stride_stat_b")):
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _ptxas_usage(ptx: str, capability: int) -> tuple:
    """(registers, spill bytes) from ``ptxas -v`` on the generated PTX, (None, None) if unavailable."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(capability).path
    except Exception:
        return None, None
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as handle:
            handle.write(ptx)
        result = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", path, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    text = result.stdout + result.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores", text)
    return (int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None)


def compile_variant(
    kernel,
    name: str,
    *,
    dtype: str,
    head_dim: int,
    varlen: bool,
    readonly: bool,
    block_m: int,
    block_n: int,
    num_warps: int,
    num_stages: int,
    capability: int = 90,
) -> CompileReport:
    import triton
    from triton.backends.compiler import GPUTarget

    constexprs = dict(HEAD_DIM=head_dim, BLOCK_M=block_m, VARLEN=varlen)
    params = set(kernel.arg_names)
    if "BLOCK_N" in params:
        constexprs.update(
            BLOCK_N=block_n,
            READONLY=readonly,
            UPCAST=False,
            INPUT_PRECISION="ieee" if dtype == "fp32" else "tf32",
            COUNT_BLOCKS=False,
            block_counts=None,
        )
        if not readonly:
            constexprs["context_start"] = None
    if not varlen:
        constexprs.update(cu_seqlens_q=None)
        if "cu_seqlens_k" in params:
            constexprs.update(cu_seqlens_k=None)
    signature, attrs = _signature(kernel, dtype, constexprs)
    variant = f"{dtype} d{head_dim} {'varlen' if varlen else 'padded'} {'readonly' if readonly else 'full'}"
    tiles = f"{block_m}x{block_n} w{num_warps} s{num_stages}"
    try:
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(
            source,
            target=GPUTarget("cuda", capability, 32),
            options=dict(num_warps=num_warps, num_stages=num_stages),
        )
    except Exception as exc:  # report, do not stop the sweep
        return CompileReport(name, variant, tiles, 0, None, None, error=f"{type(exc).__name__}: {exc}"[:500])
    ptx = compiled.asm["ptx"]
    regs, spills = _ptxas_usage(ptx, capability)
    mma = "wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else "fma")
    return CompileReport(name, variant, tiles, int(compiled.metadata.shared), regs, spills, mma)


#: (varlen, readonly) pairs; the quick set takes the simplest and the most involved variant.
ALL_VARIANTS = ((False, False), (False, True), (True, False), (True, True))
QUICK_VARIANTS = ((False, False), (True, True))


def sweep(
    head_dims: Iterable[int] = (64, 128),
    dtypes: Iterable[str] = ("bf16",),
    all_tiles: bool = False,
    variants: Sequence[tuple[bool, bool]] = ALL_VARIANTS,
) -> list[CompileReport]:
    """Compile delta, forward, dK/dV and dQ for each layout/mask variant; the first candidate tiles or all."""
    from .backward import (
        PREPROCESS_BLOCK_M,
        attention_backward_delta_kernel,
        attention_backward_dkdv_kernel,
        attention_backward_dq_kernel,
    )
    from .config import gpu_tiles
    from .forward import attention_forward_kernel

    reports = []
    for dtype in dtypes:
        for head_dim in head_dims:
            for varlen, readonly in variants:
                if not readonly:  # the delta kernel has no mask: once per layout
                    reports.append(
                        compile_variant(
                            attention_backward_delta_kernel,
                            "delta",
                            dtype=dtype,
                            head_dim=head_dim,
                            varlen=varlen,
                            readonly=False,
                            block_m=PREPROCESS_BLOCK_M,
                            block_n=0,
                            num_warps=4,
                            num_stages=1,
                        )
                    )
                for name, kernel in (
                    ("forward", attention_forward_kernel),
                    ("dkdv", attention_backward_dkdv_kernel),
                    ("dq", attention_backward_dq_kernel),
                ):
                    candidates = gpu_tiles(name, head_dim)
                    for tiles in candidates if all_tiles else candidates[:1]:
                        reports.append(
                            compile_variant(
                                kernel,
                                name,
                                dtype=dtype,
                                head_dim=head_dim,
                                varlen=varlen,
                                readonly=readonly,
                                block_m=tiles.block_m,
                                block_n=tiles.block_n,
                                num_warps=tiles.num_warps,
                                num_stages=tiles.num_stages,
                            )
                        )
    return reports


def format_reports(reports: list[CompileReport]) -> str:
    lines = [
        f"{'kernel':8} {'variant':32} {'tiles':16} {'smem KB':>8} {'regs':>5} {'spill B':>8} {'mma':>6}"
        "  status"
    ]
    for r in reports:
        regs = "-" if r.registers is None else r.registers
        spills = "-" if r.spill_bytes is None else r.spill_bytes
        lines.append(
            f"{r.kernel:8} {r.variant:32} {r.tiles:16} {r.shared_bytes / 1024:8.1f} {regs:>5} "
            f"{spills:>8} {r.mma:>6}  {'ok' if r.ok else r.error}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-tiles", action="store_true", help="compile every autotune candidate")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--dtypes", default="bf16")
    parser.add_argument(
        "--quick", action="store_true", help="only the padded full-mask and the packed readonly variants"
    )
    args = parser.parse_args(argv)
    from .config import interpreting

    if interpreting():
        print("hopper_compile: unset TRITON_INTERPRET (the kernels must be JIT functions)", file=sys.stderr)
        return 2
    reports = sweep(
        [int(d) for d in args.head_dims.split(",")],
        args.dtypes.split(","),
        args.all_tiles,
        QUICK_VARIANTS if args.quick else ALL_VARIANTS,
    )
    print(format_reports(reports))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
