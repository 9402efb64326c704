"""GPU benchmark of the fused kernels against every torch SDPA backend and flash-attn, on CineScene shapes.

All providers run in one process on the same inputs: batch 1, head dim 128,
32,760 video tokens plus 0 / 15,600 / 31,200 context tokens, 12 and 40
heads, bf16, the full and the context-readonly masks. Rates use the dense
convention (forward 4·Nq·Nk·d·H FLOPs, backward 2.5× that) so providers that
compute the masked block and ours, which skips it, are compared on the same
work; the *effective* rate counts only the query/key pairs the mask allows
(Nv·N + Nc·Nc instead of N·N) and is given only for the rows that skip the
masked block. SDPA and flash-attn get the readonly mask two ways: as the full
mask (the baseline the goal figures name) and as two dense calls (video
queries over all keys, context queries over context keys).

Skipping removes Nc·Nv of the N² pairs, so the readonly mask can be at most
N² / (N² - Nc·Nv) times faster than the same kernel on the full mask
(:func:`readonly_ceiling`: 1.28x at 15,600 and 1.33x at 31,200 context tokens
with 32,760 video tokens).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .reference import reference_attention

HEAD_DIM = 128
#: Query rows per shape checked against the float64 reference (all heads).
REFERENCE_ROWS = 1024
#: Rows taken at each end of the sequence and around the video/context boundary; the rest are uniform.
REFERENCE_EDGE_ROWS = 128
WARMUP = 2

METHODS = dict(
    timing=f"median over --iters calls after {WARMUP} warm-up calls, CUDA events around each call; forward: "
    "the provider's call on inputs without autograd; backward: torch.autograd.grad(out, (q, k, v), dout, "
    "retain_graph=True) on one forward graph built once, timed alone (not fwd+bwd minus fwd)",
    max_error=f"max |out - float64 reference of the mask the provider computes| (absolute; the [full mask] "
    f"baselines against the full mask) over {REFERENCE_ROWS} query rows, all heads: the first and last "
    f"{REFERENCE_EDGE_ROWS}, the {REFERENCE_EDGE_ROWS} around the video/context boundary, the rest "
    "uniform at random (seed 0)",
    rates="TFLOP/s in the dense convention (forward 4*N*N*d*H, backward 2.5x, whatever the mask); eff "
    "columns: allowed pairs only (Nv*N + Nc*Nc), filled only for rows that skip the masked block",
    readonly_ceiling="skipping saves Nc*Nv of N^2 pairs: at most N^2/(N^2 - Nc*Nv) times our own full mask",
)


def readonly_ceiling(num_video: int, num_context: int) -> float:
    """Best possible readonly speed-up over the same kernel on the full mask: N² / (N² - Nc·Nv)."""
    n = num_video + num_context
    return n * n / (n * n - num_context * num_video)


@dataclass(frozen=True)
class Shape:
    heads: int
    num_video: int
    num_context: int
    mask: str  # "full" or "context_readonly"
    head_dim: int = HEAD_DIM
    batch: int = 1

    @property
    def tokens(self) -> int:
        return self.num_video + self.num_context

    def dense_flops(self) -> float:
        """Forward FLOPs in the dense convention: 4·N·N·d·H (two matmuls, 2 FLOPs per MAC)."""
        return 4.0 * self.batch * self.tokens**2 * self.head_dim * self.heads

    def effective_flops(self) -> float:
        """Forward FLOPs of the pairs the mask allows: video rows see N keys, context rows Nc."""
        if self.mask == "full":
            return self.dense_flops()
        pairs = self.num_video * self.tokens + self.num_context**2
        return 4.0 * self.batch * pairs * self.head_dim * self.heads


@dataclass
class Row:
    provider: str
    heads: int
    num_context: int
    mask: str
    forward_ms: float = math.nan
    backward_ms: float = math.nan
    forward_tflops: float = math.nan  # dense convention
    backward_tflops: float = math.nan
    total_tflops: float = math.nan
    effective_forward_tflops: float = math.nan  # allowed pairs only
    effective_total_tflops: float = math.nan
    max_error: float = math.nan
    note: str = ""


@dataclass
class Provider:
    name: str
    fn: Callable  # (q, k, v, shape) -> out (B, L, H, D)
    note: str = ""
    skips_masked: bool = False  # computes only the pairs the mask allows
    computes: str | None = None  # the mask it computes when not the shape's (the baseline)


def time_ms(fn: Callable[[], object], iters: int, device="cuda", warmup: int = WARMUP) -> float:
    """Median time of ``fn`` in ms: CUDA events around each call on a GPU, the wall clock elsewhere."""
    for _ in range(warmup):
        fn()
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if on_gpu:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def time_forward_backward(fn: Callable, q, k, v, grad, iters: int, device) -> tuple[float, float]:
    """(forward ms, backward ms) of ``fn(q, k, v)``: the forward without autograd, the backward as
    ``torch.autograd.grad`` on one forward graph built once (see ``METHODS["timing"]``)."""
    with torch.no_grad():
        forward = time_ms(lambda: fn(q, k, v), iters, device)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    graph = fn(*leaves)
    backward = time_ms(lambda: torch.autograd.grad(graph, leaves, grad, retain_graph=True), iters, device)
    return forward, backward


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


def providers(shape: Shape) -> list[Provider]:
    """Ours, each SDPA backend torch offers, flash-attn if importable; readonly baselines both ways."""
    from torch.nn.attention import SDPBackend

    from . import fused_attention

    readonly = shape.mask == "context_readonly"
    found = [
        Provider(
            "cinescene-triton",
            lambda q, k, v, s: fused_attention(q, k, v, num_video=s.num_video, mask=s.mask),
            skips_masked=readonly,
        )
    ]
    dense_backends: dict[str, Callable] = {}
    for label, attr in (
        ("sdpa-flash", "FLASH_ATTENTION"),
        ("sdpa-cudnn", "CUDNN_ATTENTION"),
        ("sdpa-efficient", "EFFICIENT_ATTENTION"),
    ):
        if hasattr(SDPBackend, attr):
            dense_backends[label] = _sdpa(getattr(SDPBackend, attr))
    try:
        from flash_attn import flash_attn_func  # type: ignore

        dense_backends["flash-attn"] = lambda q, k, v: flash_attn_func(q, k, v)
    except ImportError:
        pass
    for label, dense in dense_backends.items():
        if readonly:
            found.append(
                Provider(
                    f"{label} [full mask]",
                    lambda q, k, v, s, d=dense: d(q, k, v),
                    "computes the full mask: the baseline",
                    computes="full",
                )
            )
            found.append(
                Provider(
                    f"{label} [2 calls]",
                    lambda q, k, v, s, d=dense: _split_readonly(d, q, k, v, s.num_video),
                    skips_masked=True,
                )
            )
        else:
            found.append(Provider(label, lambda q, k, v, s, d=dense: d(q, k, v)))
    return found


def reference_rows(shape: Shape, seed: int = 0) -> torch.Tensor:
    """Sorted query rows for the error check (see ``METHODS["max_error"]``); every row of a short sequence."""
    n = shape.tokens
    if n <= REFERENCE_ROWS:
        return torch.arange(n)
    edge = REFERENCE_EDGE_ROWS
    boundary = min(max(shape.num_video - edge // 2, 0), n - edge)
    chosen = torch.cat(
        [torch.arange(edge), torch.arange(n - edge, n), torch.arange(boundary, boundary + edge)]
    )
    taken = torch.zeros(n, dtype=torch.bool)
    taken[chosen] = True
    rest = torch.nonzero(~taken).flatten()
    pick = torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(seed))
    chosen = torch.cat([chosen.unique(), rest[pick[: REFERENCE_ROWS - int(taken.sum())]]])
    return chosen.sort().values


def _reference(q, k, v, num_video: int, mask: str, rows: torch.Tensor) -> torch.Tensor:
    """float64 output of ``rows`` (all heads), one head at a time to bound the (rows, N) score memory."""
    heads = []
    for h in range(q.shape[2]):
        head = slice(h, h + 1)
        heads.append(
            reference_attention(
                q[:, rows, head],
                k[:, :, head],
                v[:, :, head],
                num_video=num_video,
                mask=mask,
                query_positions=rows,
            )
        )
    return torch.cat(heads, dim=2)


def bench_shape(shape: Shape, iters: int, dtype=torch.bfloat16, seed: int = 0, device="cuda") -> list[Row]:
    """One row per provider (ours, SDPA backends, flash-attn) on the same inputs; a CPU ``device`` runs the
    same code at toy sizes (tests; ours through the Triton interpreter)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    size = (shape.batch, shape.tokens, shape.heads, shape.head_dim)
    q, k, v, grad = (torch.randn(size, device=device, dtype=dtype, generator=generator) for _ in range(4))
    rows_idx = reference_rows(shape, seed).to(q.device)
    references: dict[str, torch.Tensor] = {}
    results = []
    for provider in providers(shape):
        row = Row(provider.name, shape.heads, shape.num_context, shape.mask, note=provider.note)
        mask = provider.computes or shape.mask
        if mask not in references:
            references[mask] = _reference(q, k, v, shape.num_video, mask, rows_idx)
        try:
            with torch.no_grad():
                out = provider.fn(q, k, v, shape)
            row.max_error = float((out[:, rows_idx].double() - references[mask]).abs().max())
            del out
            row.forward_ms, row.backward_ms = time_forward_backward(
                lambda a, b, c, fn=provider.fn: fn(a, b, c, shape), q, k, v, grad, iters, device
            )
        except Exception as exc:  # an unsupported backend is a row with a note, not a crash
            row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        finally:
            torch.cuda.empty_cache()
        dense = shape.dense_flops()
        row.forward_tflops = dense / row.forward_ms * 1e-9
        row.backward_tflops = 2.5 * dense / row.backward_ms * 1e-9
        row.total_tflops = 3.5 * dense / (row.forward_ms + row.backward_ms) * 1e-9
        if provider.skips_masked and shape.mask != "full":
            effective = shape.effective_flops()
            row.effective_forward_tflops = effective / row.forward_ms * 1e-9
            row.effective_total_tflops = 3.5 * effective / (row.forward_ms + row.backward_ms) * 1e-9
        results.append(row)
        print(format_rows([row], header=False), flush=True)
    return results


def shapes(
    heads: Sequence[int], contexts: Sequence[int], num_video: int, head_dim: int = HEAD_DIM
) -> list[Shape]:
    found = []
    for h in heads:
        for c in contexts:
            found.append(Shape(h, num_video, c, "full", head_dim))
            if c > 0:
                found.append(Shape(h, num_video, c, "context_readonly", head_dim))
    return found


_COLUMNS = [
    ("provider", 30, "{}"),
    ("H", 3, "{}"),
    ("ctx", 6, "{}"),
    ("mask", 9, "{}"),
    ("fwd ms", 8, "{:.2f}"),
    ("bwd ms", 8, "{:.2f}"),
    ("fwd TF/s", 9, "{:.0f}"),
    ("bwd TF/s", 9, "{:.0f}"),
    ("f+b TF/s", 9, "{:.0f}"),
    ("eff fwd", 8, "{:.0f}"),
    ("eff f+b", 8, "{:.0f}"),
    ("max err", 8, "{:.1e}"),
]


def _cells(row: Row) -> list[str]:
    values = [
        row.provider,
        row.heads,
        row.num_context,
        "readonly" if row.mask != "full" else "full",
        row.forward_ms,
        row.backward_ms,
        row.forward_tflops,
        row.backward_tflops,
        row.total_tflops,
        row.effective_forward_tflops,
        row.effective_total_tflops,
        row.max_error,
    ]
    return [
        ("-" if isinstance(v, float) and math.isnan(v) else fmt.format(v))
        for (_, _, fmt), v in zip(_COLUMNS, values)
    ]


def format_rows(rows: Sequence[Row], header: bool = True) -> str:
    lines = [" ".join(f"{name:>{w}}" for name, w, _ in _COLUMNS)] if header else []
    for row in rows:
        cells = " ".join(f"{cell:>{w}}" for cell, (_, w, _) in zip(_cells(row), _COLUMNS))
        lines.append(cells + (f"  ({row.note})" if row.note else ""))
    return "\n".join(lines)


def format_markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| " + " | ".join(name for name, _, _ in _COLUMNS) + " | note |",
        "|" + "---|" * (len(_COLUMNS) + 1),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cells(row)) + f" | {row.note} |")
    return "\n".join(lines)


def goals(rows: Sequence[Row], num_video: int) -> list[str]:
    """The issue's goal figures, each with the measured ratio, and the readonly ceiling next to ours."""
    lines = []
    by_case: dict[tuple, list[Row]] = {}
    for row in rows:
        by_case.setdefault((row.heads, row.num_context), []).append(row)
    for (heads, context), case in sorted(by_case.items()):

        def total(r: Row) -> float:
            return r.forward_ms + r.backward_ms

        ours_full = [r for r in case if r.provider == "cinescene-triton" and r.mask == "full"]
        ours_ro = [r for r in case if r.provider == "cinescene-triton" and r.mask != "full"]
        sdpa_full = [
            r for r in case if r.provider.startswith("sdpa") and r.mask == "full" and not math.isnan(total(r))
        ]
        if ours_full and sdpa_full:
            best = min(sdpa_full, key=total)
            ratio = total(best) / total(ours_full[0])
            lines.append(
                f"H{heads} ctx{context} full fwd+bwd: {ratio:.2f}x {best.provider} (goal >= 1.0x)"
                f"{'' if ratio >= 1.0 else '  NOT MET'}"
            )
            if heads == 12:
                tf = ours_full[0].forward_tflops
                lines.append(
                    f"H{heads} ctx{context} full forward: {tf:.0f} TFLOP/s (goal >= 550)"
                    f"{'' if tf >= 550 else '  NOT MET'}"
                )
        if ours_ro and sdpa_full:
            best = min(sdpa_full, key=total)
            ratio = total(best) / total(ours_ro[0])
            lines.append(
                f"H{heads} ctx{context} readonly fwd+bwd: {ratio:.2f}x {best.provider} on the full mask "
                f"(goal >= 1.3x){'' if ratio >= 1.3 else '  NOT MET'}"
            )
        if ours_ro and ours_full:
            ceiling = readonly_ceiling(num_video, context)
            lines.append(
                f"H{heads} ctx{context} readonly fwd+bwd: {total(ours_full[0]) / total(ours_ro[0]):.2f}x "
                f"our own full mask (ceiling {ceiling:.2f}x = N^2/(N^2 - Nc*Nv); the 1.3x goal needs our "
                f"full mask >= {1.3 / ceiling:.2f}x the best SDPA backend)"
            )
    return lines


def _write(
    out: Path,
    about: dict,
    setup: str,
    num_video: int,
    iters: int,
    contexts: Sequence[int],
    rows: Sequence[Row],
    summary: Sequence[str],
    complete: bool,
) -> None:
    """JSON at ``out`` and Markdown next to it; rewritten
    after every shape, so a run cut short keeps its rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    ceilings = {str(c): round(readonly_ceiling(num_video, c), 4) for c in contexts if c > 0}
    payload = dict(
        provenance=about,
        complete=complete,
        setup=setup,
        num_video=num_video,
        iters=iters,
        methods=METHODS,
        readonly_ceiling=ceilings,
        rows=[asdict(r) for r in rows],
        goals=list(summary),
    )
    out.write_text(json.dumps(payload, indent=1, default=str))
    out.with_suffix(".md").write_text(
        f"Device: {about['device']}; date {about['date']}; commit {about['commit']}"
        f"{' (uncommitted changes)' if about['dirty'] else ''}; torch {about['torch']}, triton "
        f"{about['triton']}, flash-attn {about['flash_attn'] or 'absent'}; {setup}"
        f"{'' if complete else '; INCOMPLETE run'}.\n\n"
        + "".join(f"- {name}: {text}\n" for name, text in METHODS.items())
        + "\n"
        + format_markdown(rows)
        + "\n\n"
        + "\n".join(f"- {line}" for line in summary)
        + "\n"
    )


def run(
    heads: Sequence[int],
    contexts: Sequence[int],
    num_video: int,
    iters: int,
    out: Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device="cuda",
    head_dim: int = HEAD_DIM,
) -> list[Row]:
    """Benchmark every shape, print the table, write JSON (``out``) and Markdown (``out`` with .md).

    The defaults are the GPU benchmark; a CPU ``device`` with toy sizes runs the same code (tests).
    """
    from ..provenance import provenance

    about = provenance(torch.device(device))
    setup = (
        f"{str(dtype).replace('torch.', '')}, d={head_dim}, batch 1, {num_video} video tokens, "
        f"{iters} iterations (median)"
    )
    print(
        f"attention benchmark on {about['device']}, torch {about['torch']}, triton {about['triton']}, "
        f"flash-attn {about['flash_attn'] or 'absent'}, commit {about['commit'] or 'unknown'}, "
        f"{about['date']}"
    )
    print(setup)
    for name, text in METHODS.items():
        print(f"{name}: {text}")
    print(format_rows([]))
    rows: list[Row] = []
    for shape in shapes(heads, contexts, num_video, head_dim):
        rows += bench_shape(shape, iters, dtype, device=device)
        if out is not None:
            _write(
                out, about, setup, num_video, iters, contexts, rows, goals(rows, num_video), complete=False
            )
    summary = goals(rows, num_video)
    print("\n".join(summary))
    if out is not None:
        _write(out, about, setup, num_video, iters, contexts, rows, summary, complete=True)
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return rows
