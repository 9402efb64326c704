"""Benchmark of a batch whose samples hold different numbers of scene images: packed vs padded attention.

The batch: samples with the same video (32,760 tokens at 81x480x832) and
``images[i]`` scene images of 1,560 context tokens each (30x52 latent
patches), so different lengths. Providers, all on the same inputs:

- ``cinescene-triton varlen``: the real tokens packed, one varlen launch
  (what the model runs on a GPU for such a batch);
- ``cinescene-triton padded``: the padded batch in one launch, padding
  computed as if real: the cost a model pays that pads without packing
  (its outputs differ, real tokens see padding, so it has no error column;
  its pad and unpad copies are timed with it);
- ``sdpa per sample``: one dense torch SDPA call per sample at its own
  length, the readonly mask as two calls (the model's fallback path).

Rates count only the real pairs each sample's mask allows, so they compare
the useful work per second. Errors are against a float64 reference of each
sample alone, on the rows :func:`.bench.reference_rows` picks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .bench import HEAD_DIM, Shape, _reference, _split_readonly, reference_rows, time_forward_backward

TOKENS_PER_IMAGE = 30 * 52


@dataclass
class PackedRow:
    provider: str
    mask: str
    forward_ms: float = math.nan
    backward_ms: float = math.nan
    real_forward_tflops: float = math.nan  # allowed pairs of the real tokens only
    real_total_tflops: float = math.nan
    max_error: float = math.nan
    note: str = ""


@dataclass(frozen=True)
class PackedBatch:
    heads: int
    num_video: int
    images: Sequence[int]
    tokens_per_image: int = TOKENS_PER_IMAGE
    head_dim: int = HEAD_DIM

    def lengths(self) -> list[int]:
        return [self.num_video + n * self.tokens_per_image for n in self.images]

    def sample_shapes(self, mask: str) -> list[Shape]:
        return [
            Shape(self.heads, self.num_video, n * self.tokens_per_image, mask, self.head_dim)
            for n in self.images
        ]

    def real_flops(self, mask: str) -> float:
        """Forward FLOPs of the pairs each sample's mask allows over its real tokens."""
        return sum(shape.effective_flops() for shape in self.sample_shapes(mask))


def _dense(q, k, v):
    """torch SDPA (its own backend choice) over (B, L, H, D) tensors."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(
        1, 2
    )


def _per_sample(q, k, v, batch: PackedBatch, mask: str) -> torch.Tensor:
    """Packed (total, H, D) -> packed output, one dense SDPA call per sample (two for readonly)."""
    outs = []
    for qi, ki, vi in zip(*(t.split(batch.lengths()) for t in (q, k, v))):
        qi, ki, vi = qi[None], ki[None], vi[None]
        out = _dense(qi, ki, vi) if mask == "full" else _split_readonly(_dense, qi, ki, vi, batch.num_video)
        outs.append(out[0])
    return torch.cat(outs)


def providers(batch: PackedBatch, mask: str, device) -> list[tuple]:
    """(name, fn over packed q/k/v -> packed output, whether
    its output is checked against the reference, note)."""
    from . import fused_attention, fused_attention_varlen

    lengths = batch.lengths()
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    cu = cu.to(device)
    longest = max(lengths)
    starts = [batch.num_video] * len(lengths) if mask != "full" else None

    def varlen(q, k, v):
        return fused_attention_varlen(q, k, v, cu, cu, longest, longest, context_start=starts, mask=mask)

    def padded(q, k, v):
        pieces = [t.split(lengths) for t in (q, k, v)]
        qp, kp, vp = (
            torch.stack([F.pad(p, (0, 0, 0, 0, 0, longest - p.shape[0])) for p in ps]) for ps in pieces
        )
        out = fused_attention(qp, kp, vp, num_video=batch.num_video, mask=mask)
        return torch.cat([row[:length] for row, length in zip(out, lengths)])

    return [
        ("cinescene-triton varlen", varlen, True, ""),
        ("cinescene-triton padded", padded, False, "padding computed as real: the cost without packing"),
        (
            "sdpa per sample",
            lambda q, k, v: _per_sample(q, k, v, batch, mask),
            True,
            "one SDPA call per sample (two for readonly)",
        ),
    ]


def _errors(out: torch.Tensor, q, k, v, batch: PackedBatch, mask: str) -> float:
    worst, start = 0.0, 0
    for shape, length in zip(batch.sample_shapes(mask), batch.lengths()):
        rows = reference_rows(shape).to(q.device)
        qi, ki, vi = (t[start : start + length][None] for t in (q, k, v))
        ref = _reference(qi, ki, vi, batch.num_video, mask, rows)
        worst = max(worst, float((out[start : start + length][None][:, rows].double() - ref).abs().max()))
        start += length
    return worst


def bench_mask(batch: PackedBatch, mask: str, iters: int, dtype, device, seed: int = 0) -> list[PackedRow]:
    generator = torch.Generator(device=device).manual_seed(seed)
    size = (sum(batch.lengths()), batch.heads, batch.head_dim)
    q, k, v, grad = (torch.randn(size, device=device, dtype=dtype, generator=generator) for _ in range(4))
    flops = batch.real_flops(mask)
    results = []
    for name, fn, checked, note in providers(batch, mask, device):
        row = PackedRow(name, mask, note=note)
        try:
            if checked:
                with torch.no_grad():
                    row.max_error = _errors(fn(q, k, v), q, k, v, batch, mask)
            row.forward_ms, row.backward_ms = time_forward_backward(fn, q, k, v, grad, iters, device)
        except Exception as exc:  # an unsupported provider is a row with a note, not a crash
            row.note = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        row.real_forward_tflops = flops / row.forward_ms * 1e-9
        row.real_total_tflops = 3.5 * flops / (row.forward_ms + row.backward_ms) * 1e-9
        results.append(row)
        print(format_row(row), flush=True)
    return results


def format_row(row: PackedRow) -> str:
    def num(value: float, fmt: str) -> str:
        return "-" if math.isnan(value) else fmt.format(value)

    return (
        f"{row.provider:>24} {row.mask:>16} "
        f"{num(row.forward_ms, '{:.2f}'):>8} {num(row.backward_ms, '{:.2f}'):>8} "
        f"{num(row.real_forward_tflops, '{:.0f}'):>9} {num(row.real_total_tflops, '{:.0f}'):>9} "
        f"{num(row.max_error, '{:.1e}'):>8}" + (f"  ({row.note})" if row.note else "")
    )


HEADER = (
    f"{'provider':>24} {'mask':>16} {'fwd ms':>8} {'bwd ms':>8} {'real fwd':>9} {'real f+b':>9} "
    f"{'max err':>8}   (real: TFLOP/s over the pairs each sample's mask allows)"
)


def summary(rows: Sequence[PackedRow]) -> list[str]:
    lines = []
    for mask in sorted({r.mask for r in rows}):
        by_name = {r.provider: r for r in rows if r.mask == mask}
        ours = by_name.get("cinescene-triton varlen")
        if ours is None or math.isnan(ours.forward_ms + ours.backward_ms):
            continue
        for other in ("cinescene-triton padded", "sdpa per sample"):
            base = by_name.get(other)
            if base is not None and not math.isnan(base.forward_ms + base.backward_ms):
                ratio = (base.forward_ms + base.backward_ms) / (ours.forward_ms + ours.backward_ms)
                lines.append(f"{mask}: packed varlen fwd+bwd speed-up over {other}: {ratio:.2f}x")
    return lines


def run(
    images: Sequence[int],
    heads: int = 12,
    num_video: int = 32760,
    iters: int = 10,
    out: Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device="cuda",
    head_dim: int = HEAD_DIM,
    tokens_per_image: int = TOKENS_PER_IMAGE,
) -> list[PackedRow]:
    """Both masks; prints the table, writes JSON at ``out`` and Markdown next to it. A CPU ``device`` with toy
    sizes runs the same code (tests; ours through the Triton interpreter)."""
    from ..provenance import provenance

    batch = PackedBatch(heads, num_video, list(images), tokens_per_image, head_dim)
    about = provenance(torch.device(device))
    setup = (
        f"{str(dtype).replace('torch.', '')}, H{heads}, d={head_dim}, batch {len(batch.images)}: "
        f"{num_video} video tokens + {list(images)} scene images x {tokens_per_image} tokens "
        f"(lengths {batch.lengths()}), {iters} iterations (median)"
    )
    print(
        f"packed-batch attention benchmark on {about['device']}, commit {about['commit'] or 'unknown'}, "
        f"{about['date']}\n{setup}\n{HEADER}"
    )
    rows: list[PackedRow] = []
    for mask in ("full", "context_readonly"):
        rows += bench_mask(batch, mask, iters, dtype, device)
    lines = summary(rows)
    print("\n".join(lines))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                dict(provenance=about, setup=setup, rows=[asdict(r) for r in rows], summary=lines),
                indent=1,
                default=str,
            )
        )
        out.with_suffix(".md").write_text(
            f"Device: {about['device']}; date {about['date']}; commit {about['commit']}; {setup}.\n\n```\n"
            + HEADER
            + "\n"
            + "\n".join(format_row(r) for r in rows)
            + "\n```\n\n"
            + "".join(f"- {line}\n" for line in lines)
        )
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return rows
