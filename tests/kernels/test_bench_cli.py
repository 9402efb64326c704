"""`cinescene bench attention`: argument handling, the no-GPU message, the --check plumbing, table helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cinescene.kernels.attention import bench
from cinescene.launch import cli
from cinescene.launch.commands import bench_attention


def test_parses_the_documented_options():
    args = cli.build_parser().parse_args(
        [
            "bench",
            "attention",
            "--heads",
            "12,40",
            "--context",
            "0,15600,31200",
            "--video",
            "32760",
            "--iters",
            "3",
            "--out",
            "x.json",
        ]
    )
    assert args.heads == [12, 40] and args.context == [0, 15600, 31200] and args.iters == 3


def test_rejects_a_malformed_list(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "attention", "--heads", "12,x"])
    assert exc.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_benchmark_without_gpu_says_so(capsys):
    assert cli.main(["bench", "attention"]) == 1
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--check" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU plumbing of --check")
def test_check_runs_the_sweep_in_the_interpreter_and_compiles_for_hopper(monkeypatch, capsys):
    """--check starts the sweep with TRITON_INTERPRET=1 and the sm_90 compile without it (both real runs
    are CI steps of their own; here the two subprocesses are recorded, not run)."""
    calls = []
    monkeypatch.setattr(
        bench_attention,
        "_run_module",
        lambda module, args, env: calls.append((module, env.get("TRITON_INTERPRET"), args)) or 0,
    )
    assert cli.main(["bench", "attention", "--check"]) == 0
    assert [call[:2] for call in calls] == [
        ("cinescene.kernels.attention.check", "1"),
        ("cinescene.kernels.attention.hopper_compile", None),
    ]
    compile_args = calls[1][2]
    assert compile_args[compile_args.index("--dtypes") + 1] == "bf16,fp16"
    monkeypatch.setattr(bench_attention, "_run_module", lambda module, args, env: 1)
    assert cli.main(["bench", "attention", "--check"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_flop_conventions():
    full = bench.Shape(12, 32760, 15600, "full")
    readonly = bench.Shape(12, 32760, 15600, "context_readonly")
    n = 32760 + 15600
    assert full.dense_flops() == 4 * n * n * 128 * 12 == readonly.dense_flops()
    assert readonly.effective_flops() == 4 * (32760 * n + 15600**2) * 128 * 12
    assert full.effective_flops() == full.dense_flops()


def test_shapes_pair_each_context_with_both_masks():
    found = bench.shapes([12, 40], [0, 15600], 32760)
    assert [(s.heads, s.num_context, s.mask) for s in found] == [
        (12, 0, "full"),
        (12, 15600, "full"),
        (12, 15600, "context_readonly"),
        (40, 0, "full"),
        (40, 15600, "full"),
        (40, 15600, "context_readonly"),
    ]


def test_table_and_goal_lines():
    rows = [
        bench.Row("cinescene-triton", 12, 15600, "full", 10.0, 25.0, 600.0),
        bench.Row("sdpa-flash", 12, 15600, "full", 12.0, 30.0, 500.0),
        bench.Row("cinescene-triton", 12, 15600, "context_readonly", 7.0, 18.0, 850.0),
        bench.Row("sdpa-cudnn", 12, 15600, "full", note="RuntimeError: no kernel"),
    ]
    text = bench.format_rows(rows)
    assert "cinescene-triton" in text and "(RuntimeError: no kernel)" in text
    assert bench.format_markdown(rows).count("\n") == len(rows) + 1
    goals = "\n".join(bench.goals(rows, 32760))
    assert "full fwd+bwd: 1.20x sdpa-flash" in goals
    assert "readonly fwd+bwd: 1.68x sdpa-flash" in goals
    assert "600 TFLOP/s" in goals and "NOT MET" not in goals
    assert "readonly fwd+bwd: 1.40x our own full mask (ceiling 1.28x" in goals
    assert math.isnan(rows[3].forward_ms)


def test_readonly_ceiling_is_the_share_of_pairs_left():
    """N^2 / (N^2 - Nc*Nv): the most skipping the context-to-video block can give over our own full mask."""
    assert bench.readonly_ceiling(32760, 15600) == pytest.approx(48360**2 / (48360**2 - 15600 * 32760))
    assert round(bench.readonly_ceiling(32760, 15600), 2) == 1.28
    assert round(bench.readonly_ceiling(32760, 31200), 2) == 1.33
    assert bench.readonly_ceiling(32760, 0) == 1.0


def test_reference_rows_cover_both_ends_and_the_boundary():
    shape = bench.Shape(12, 32760, 15600, "context_readonly")
    rows = bench.reference_rows(shape)
    assert rows.numel() == bench.REFERENCE_ROWS == rows.unique().numel()
    assert bool((rows[1:] > rows[:-1]).all())
    listed = set(rows.tolist())
    assert {0, 127, shape.tokens - 1, 32760 - 64, 32760, 32760 + 63} <= listed
    assert torch.equal(bench.reference_rows(shape), rows)  # seeded
    assert bench.reference_rows(bench.Shape(1, 40, 9, "full")).tolist() == list(range(49))


@pytest.mark.slow
def test_bench_runs_on_cpu_at_toy_size(tmp_path, device):
    """The GPU benchmark's code path on the CPU (ours through the interpreter, SDPA's CPU backends): errors
    against float64, backward timed on its own, effective rates only on the rows that skip the masked
    block."""
    if device != "cpu":
        pytest.skip("the toy-size run is the CPU check of the GPU benchmark's code")
    out = tmp_path / "bench.json"
    rows = bench.run([1], [16], 32, 1, out=out, dtype=torch.float32, device="cpu", head_dim=16)
    ran = [r for r in rows if not math.isnan(r.forward_ms)]
    assert {r.provider for r in ran} >= {"cinescene-triton", "sdpa-flash [full mask]", "sdpa-flash [2 calls]"}
    for row in ran:
        assert row.max_error < 1e-5, row  # each provider against the reference of the mask it computes
        assert row.backward_ms > 0
        skips = row.mask != "full" and (
            row.provider == "cinescene-triton" or row.provider.endswith("[2 calls]")
        )
        assert math.isnan(row.effective_forward_tflops) != skips, row

    payload = json.loads(out.read_text())
    assert payload["complete"] and payload["readonly_ceiling"] == {
        "16": round(bench.readonly_ceiling(32, 16), 4)
    }
    assert set(payload["provenance"]) >= {"date", "commit", "torch", "triton", "flash_attn", "device"}
    assert payload["provenance"]["date"].endswith("+00:00") and "retain_graph" in payload["methods"]["timing"]
    assert "Device: CPU" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_packed_bench_runs_on_cpu_at_toy_size(tmp_path, device):
    """`bench attention --packed`'s code path on the CPU: every provider runs both masks, the correct ones
    match each sample's float64 reference, the padded one (which attends padding) has no error figure."""
    if device != "cpu":
        pytest.skip("the toy-size run is the CPU check of the GPU benchmark's code")
    from cinescene.kernels.attention import bench_packed

    out = tmp_path / "packed.json"
    rows = bench_packed.run(
        [2, 1],
        heads=1,
        num_video=16,
        iters=1,
        out=out,
        dtype=torch.float32,
        device="cpu",
        head_dim=16,
        tokens_per_image=8,
    )
    assert {(r.provider, r.mask) for r in rows} == {
        (p, m)
        for p in ("cinescene-triton varlen", "cinescene-triton padded", "sdpa per sample")
        for m in ("full", "context_readonly")
    }
    for row in rows:
        assert row.forward_ms > 0 and row.backward_ms > 0, row
        if row.provider == "cinescene-triton padded":
            assert math.isnan(row.max_error)
        else:
            assert row.max_error < 1e-5, row
    batch = bench_packed.PackedBatch(1, 16, [2, 1], 8, 16)
    assert batch.lengths() == [32, 24]
    assert batch.real_flops("full") == 4.0 * (32**2 + 24**2) * 16
    payload = json.loads(out.read_text())
    assert len(payload["rows"]) == 6 and len(payload["summary"]) == 4
    assert "Device: CPU" in out.with_suffix(".md").read_text()
