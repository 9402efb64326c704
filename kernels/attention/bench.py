"""GPU benchmark of the fused kernels against every torch SDPA backend and flash-attn, on CineScene shapes.

All providers run in one process on the same inputs: batch 1, head dim 128,
32,760 video tokens plus 0 / 15,600 / 31,200 context tokens, 12 and 40
heads, bf16, the full and the context-readonly masks. Rates use the dense
convention (forward 4·Nq·Nk·d·H FLOPs, backward 2.5× that) so providers that
compute the masked block and ours, which skips it, are compared on the same
work; the *effective* rate counts only the query/key pairs the mask allows
(Nv·N + Nc·Nc instead of N·N). SDPA and flash-attn get the readonly mask two
ways: as the full mask (the baseline the goal figures name) and as two dense
calls (video queries over all keys, context queries over context keys).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

HEAD_DIM = 128
REFERENCE_ROWS = 64          # per end of the sequence: rows checked against the fp32 reference


@dataclass(frozen=True)
class Shape:
    heads: int
    num_video: int
    num_context: int
    mask: str                # "full" or "context_readonly"
    head_dim: int = HEAD_DIM
    batch: int = 1

    @property
    def tokens(self) -> int:
        return self.num_video + self.num_context

    def dense_flops(self) -> float:
        """Forward FLOPs in the dense convention: 4·N·N·d·H (two matmuls, 2 FLOPs per MAC)."""
        return 4.0 * self.batch * self.tokens ** 2 * self.head_dim * self.heads

    def effective_flops(self) -> float:
        """Forward FLOPs of the pairs the mask allows: video rows see N keys, context rows Nc."""
        if self.mask == "full":
            return self.dense_flops()
        pairs = self.num_video * self.tokens + self.num_context ** 2
        return 4.0 * self.batch * pairs * self.head_dim * self.heads


@dataclass
class Row:
    provider: str
    heads: int
    num_context: int
    mask: str
    forward_ms: float = math.nan
    backward_ms: float = math.nan
    forward_tflops: float = math.nan             # dense convention
    backward_tflops: float = math.nan
    total_tflops: float = math.nan
    effective_forward_tflops: float = math.nan   # allowed pairs only
    effective_total_tflops: float = math.nan
    max_error: float = math.nan
    note: str = ""


@dataclass
class Provider:
    name: str
    fn: Callable                                  # (q, k, v, shape) -> out (B, L, H, D)
    note: str = ""


def cuda_time_ms(fn: Callable[[], None], iters: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` on the current stream, CUDA events around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _split_readonly(dense: Callable, q, k, v, num_video: int):
    """The readonly mask as two dense calls: video queries x all keys, context queries x context keys."""
    video = dense(q[:, :num_video], k, v)
    context = dense(q[:, num_video:], k[:, num_video:], v[:, num_video:])
    return torch.cat([video, context], dim=1)


def _sdpa(backend) -> Callable:
    from torch.nn.attention import sdpa_kernel

    def dense(q, k, v):
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    return dense


def providers(shape: Shape) -> List[Provider]:
    """Ours, each SDPA backend torch offers, flash-attn if importable; readonly baselines both ways."""
    from torch.nn.attention import SDPBackend

    from . import fused_attention

    readonly = shape.mask == "context_readonly"
    found = [Provider("cinescene-triton", lambda q, k, v, s: fused_attention(q, k, v, num_video=s.num_video,
                                                                              mask=s.mask))]
    dense_backends: Dict[str, Callable] = {}
    for label, attr in (("sdpa-flash", "FLASH_ATTENTION"), ("sdpa-cudnn", "CUDNN_ATTENTION"),
                        ("sdpa-efficient", "EFFICIENT_ATTENTION")):
        if hasattr(SDPBackend, attr):
            dense_backends[label] = _sdpa(getattr(SDPBackend, attr))
    try:
        from flash_attn import flash_attn_func  # type: ignore

        dense_backends["flash-attn"] = lambda q, k, v: flash_attn_func(q, k, v)
    except ImportError:
        pass
    for label, dense in dense_backends.items():
        if readonly:
            found.append(Provider(f"{label} [full mask]", lambda q, k, v, s, d=dense: d(q, k, v),
                                  "computes the full mask: the baseline"))
            found.append(Provider(f"{label} [2 calls]",
                                  lambda q, k, v, s, d=dense: _split_readonly(d, q, k, v, s.num_video)))
        else:
            found.append(Provider(label, lambda q, k, v, s, d=dense: d(q, k, v)))
    return found


def _reference_rows(q, k, v, shape: Shape):
    """fp32 attention of the first and last REFERENCE_ROWS queries: (row indices, output rows)."""
    rows = torch.cat([torch.arange(REFERENCE_ROWS), torch.arange(shape.tokens - REFERENCE_ROWS, shape.tokens)])
    rows = rows.to(q.device)
    scores = torch.einsum("bqhd,bkhd->bhqk", q[:, rows].float(), k.float()) / math.sqrt(shape.head_dim)
    if shape.mask == "context_readonly":
        keys = torch.arange(shape.tokens, device=q.device)
        blocked = (rows[:, None] >= shape.num_video) & (keys[None, :] < shape.num_video)
        scores = scores.masked_fill(blocked, float("-inf"))
    return rows, torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float())


def bench_shape(shape: Shape, iters: int, dtype=torch.bfloat16, seed: int = 0) -> List[Row]:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    size = (shape.batch, shape.tokens, shape.heads, shape.head_dim)
    q, k, v, grad = (torch.randn(size, device="cuda", dtype=dtype, generator=generator) for _ in range(4))
    rows_idx, reference = _reference_rows(q, k, v, shape)
    results = []
    for provider in providers(shape):
        row = Row(provider.name, shape.heads, shape.num_context, shape.mask, note=provider.note)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        try:
            with torch.no_grad():
                out = provider.fn(q, k, v, shape)
            row.max_error = float((out[:, rows_idx].float() - reference).abs().max())
            del out
            row.forward_ms = cuda_time_ms(lambda: provider.fn(q, k, v, shape), iters)

            def forward_backward():
                for t in leaves:
                    t.grad = None
                provider.fn(*leaves, shape).backward(grad)

            row.backward_ms = cuda_time_ms(forward_backward, iters) - row.forward_ms
        except Exception as exc:  # an unsupported backend is a row with a note, not a crash
            row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        finally:
            torch.cuda.empty_cache()
        dense, effective = shape.dense_flops(), shape.effective_flops()
        row.forward_tflops = dense / row.forward_ms * 1e-9
        row.backward_tflops = 2.5 * dense / row.backward_ms * 1e-9
        row.total_tflops = 3.5 * dense / (row.forward_ms + row.backward_ms) * 1e-9
        row.effective_forward_tflops = effective / row.forward_ms * 1e-9
        row.effective_total_tflops = 3.5 * effective / (row.forward_ms + row.backward_ms) * 1e-9
        results.append(row)
        print(format_rows([row], header=False), flush=True)
    return results


def shapes(heads: Sequence[int], contexts: Sequence[int], num_video: int) -> List[Shape]:
    found = []
    for h in heads:
        for c in contexts:
            found.append(Shape(h, num_video, c, "full"))
            if c > 0:
                found.append(Shape(h, num_video, c, "context_readonly"))
    return found


_COLUMNS = [("provider", 30, "{}"), ("H", 3, "{}"), ("ctx", 6, "{}"), ("mask", 9, "{}"),
            ("fwd ms", 8, "{:.2f}"), ("bwd ms", 8, "{:.2f}"), ("fwd TF/s", 9, "{:.0f}"), ("bwd TF/s", 9, "{:.0f}"),
            ("f+b TF/s", 9, "{:.0f}"), ("eff fwd", 8, "{:.0f}"), ("eff f+b", 8, "{:.0f}"), ("max err", 8, "{:.1e}")]


def _cells(row: Row) -> List[str]:
    values = [row.provider, row.heads, row.num_context, "readonly" if row.mask != "full" else "full",
              row.forward_ms, row.backward_ms, row.forward_tflops, row.backward_tflops, row.total_tflops,
              row.effective_forward_tflops, row.effective_total_tflops, row.max_error]
    return [("-" if isinstance(v, float) and math.isnan(v) else fmt.format(v)) for (_, _, fmt), v in
            zip(_COLUMNS, values)]


def format_rows(rows: Sequence[Row], header: bool = True) -> str:
    lines = [" ".join(f"{name:>{w}}" for name, w, _ in _COLUMNS)] if header else []
    for row in rows:
        cells = " ".join(f"{cell:>{w}}" for cell, (_, w, _) in zip(_cells(row), _COLUMNS))
        lines.append(cells + (f"  ({row.note})" if row.note else ""))
    return "\n".join(lines)


def format_markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(name for name, _, _ in _COLUMNS) + " | note |",
             "|" + "---|" * (len(_COLUMNS) + 1)]
    for row in rows:
        lines.append("| " + " | ".join(_cells(row)) + f" | {row.note} |")
    return "\n".join(lines)


def goals(rows: Sequence[Row]) -> List[str]:
    """The issue's goal figures, each with the measured ratio."""
    lines = []
    by_case: Dict[tuple, List[Row]] = {}
    for row in rows:
        by_case.setdefault((row.heads, row.num_context), []).append(row)
    for (heads, context), case in sorted(by_case.items()):
        def total(r: Row) -> float:
            return r.forward_ms + r.backward_ms

        ours_full = [r for r in case if r.provider == "cinescene-triton" and r.mask == "full"]
        ours_ro = [r for r in case if r.provider == "cinescene-triton" and r.mask != "full"]
        sdpa_full = [r for r in case if r.provider.startswith("sdpa") and r.mask == "full"
                     and not math.isnan(total(r))]
        if ours_full and sdpa_full:
            best = min(sdpa_full, key=total)
            ratio = total(best) / total(ours_full[0])
            lines.append(f"H{heads} ctx{context} full fwd+bwd: {ratio:.2f}x {best.provider} (goal >= 1.0x)"
                         f"{'' if ratio >= 1.0 else '  NOT MET'}")
            if heads == 12:
                tf = ours_full[0].forward_tflops
                lines.append(f"H{heads} ctx{context} full forward: {tf:.0f} TFLOP/s (goal >= 550)"
                             f"{'' if tf >= 550 else '  NOT MET'}")
        if ours_ro and sdpa_full:
            best = min(sdpa_full, key=total)
            ratio = total(best) / total(ours_ro[0])
            lines.append(f"H{heads} ctx{context} readonly fwd+bwd: {ratio:.2f}x {best.provider} on the full mask "
                         f"(goal >= 1.3x){'' if ratio >= 1.3 else '  NOT MET'}")
    return lines


def run(heads: Sequence[int], contexts: Sequence[int], num_video: int, iters: int,
        out: Optional[Path] = None) -> List[Row]:
    """Benchmark every shape, print the table, write JSON (``out``) and Markdown (``out`` with .md)."""
    device = torch.cuda.get_device_name()
    print(f"attention benchmark on {device}, torch {torch.__version__}, bf16, d={HEAD_DIM}, batch 1, "
          f"{iters} iterations (median)")
    print(format_rows([]))
    rows: List[Row] = []
    for shape in shapes(heads, contexts, num_video):
        rows += bench_shape(shape, iters)
    summary = goals(rows)
    print("\n".join(summary))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(device=device, torch=torch.__version__, dtype="bf16", head_dim=HEAD_DIM,
                       num_video=num_video, iters=iters, rows=[asdict(r) for r in rows], goals=summary)
        out.write_text(json.dumps(payload, indent=1, default=str))
        out.with_suffix(".md").write_text(
            f"Device: {device}; torch {torch.__version__}; bf16, d={HEAD_DIM}, batch 1, "
            f"{num_video} video tokens; TFLOP/s in the dense convention (eff = allowed pairs only).\n\n"
            + format_markdown(rows) + "\n\n" + "\n".join(f"- {line}" for line in summary) + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return rows
