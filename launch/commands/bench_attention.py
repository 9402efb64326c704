"""`cinescene bench attention`: fused attention vs torch SDPA / flash-attn (GPU), or `--check` (any machine).

Imports stay light (argparse only): torch and the kernels load inside the handler.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from cinescene.errors import CineSceneError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="fused attention vs torch SDPA / flash-attn",
        description="On a GPU: time forward and backward of the fused Triton attention against every torch "
        "SDPA backend and flash-attn at CineScene shapes (batch 1, d=128, bf16), print TFLOP/s "
        "(dense convention; effective rate for the readonly mask separately) and max errors. "
        "With --check: the correctness sweep against a float64 reference (on a CPU through the "
        "Triton interpreter, plus an sm_90 compile of the kernels in bf16 and fp16); exits 0 only if "
        "all pass.",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run the correctness sweep instead of the benchmark (works without a GPU)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="write the results as JSON here (and Markdown next to it, .md)"
    )
    p.add_argument("--heads", type=_int_list, default=[12, 40], help="head counts (default 12,40)")
    p.add_argument(
        "--context",
        type=_int_list,
        default=[0, 15600, 31200],
        help="context token counts (default 0,15600,31200)",
    )
    p.add_argument("--video", type=int, default=32760, help="video tokens (default 32760: 81x480x832)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per measurement (median)")
    p.add_argument(
        "--packed",
        action="store_true",
        help="instead: a batch whose samples hold different numbers of scene images (--images), "
        "packed varlen vs the padded batch vs one SDPA call per sample, both masks "
        "(first of --heads)",
    )
    p.add_argument(
        "--images",
        type=_int_list,
        default=[20, 5],
        help="with --packed: scene images per sample, 1,560 context tokens each (default 20,5)",
    )
    p.set_defaults(func=run)


def _run_module(module: str, args: list[str], env: dict) -> int:
    return subprocess.run([sys.executable, "-m", module, *args], env=env).returncode


def run_check(out: Path | None) -> int:
    """Correctness sweep in a fresh process (triton reads TRITON_INTERPRET when the kernels are defined)."""
    import torch

    env = dict(os.environ)
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        env["TRITON_INTERPRET"] = "1"
    start = time.perf_counter()
    sweep_args = ["--json", str(out)] if out is not None else []
    status = _run_module("cinescene.kernels.attention.check", sweep_args, env)
    if not on_gpu:
        # The interpreter never exercises GPU code generation: lower the kernels to sm_90 cubins too.
        print("\nsm_90 (Hopper) ahead-of-time compile of the kernels, no GPU needed:", flush=True)
        compile_env = {key: value for key, value in env.items() if key != "TRITON_INTERPRET"}
        status |= _run_module(
            "cinescene.kernels.attention.hopper_compile",
            ["--head-dims", "128", "--dtypes", "bf16,fp16", "--quick"],
            compile_env,
        )
    print(f"\nattention check {'passed' if status == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s")
    return 0 if status == 0 else 1


def run(args: argparse.Namespace) -> int:
    if args.check:
        return run_check(args.out)
    import torch

    if not torch.cuda.is_available():
        raise CineSceneError(
            "the attention benchmark needs a CUDA GPU (none is visible); "
            "run `cinescene bench attention --check` for the CPU correctness sweep"
        )
    if args.iters < 1 or args.video < 1:
        raise CineSceneError("--iters and --video must be positive")
    if args.packed:
        from cinescene.kernels.attention import bench_packed

        bench_packed.run(
            args.images, heads=args.heads[0], num_video=args.video, iters=args.iters, out=args.out
        )
        return 0
    from cinescene.kernels.attention import bench

    bench.run(args.heads, args.context, args.video, args.iters, args.out)
    return 0
