"""`cinescene bench sampling`: with and without the
context cache on the same noise; the outputs must match."""

from __future__ import annotations

import json

import pytest
import torch

from cinescene.launch import cli
from cinescene.sampling import bench
from tests.models.helpers import REPO

SMOKE = str(REPO / "configs/experiments/smoke.yaml")
WAN_1_3B = str(REPO / "configs/model/wan1.3b.yaml")


@pytest.mark.slow
def test_smoke_config_samples_the_same_video_with_and_without_the_cache(tmp_path, capsys):
    out = tmp_path / "sampling.json"
    assert cli.main(["bench", "sampling", SMOKE, "--steps", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # The smoke config keeps the full mask: the command applies the cache's setting and says so.
    assert "needs model.attention.mask=context_readonly: applied" in printed
    report = json.loads(out.read_text())
    assert report["applied_for_cache"] == ["model.attention.mask=context_readonly"]
    assert report["plan"]["steps"] == 3 and report["plan"]["guidance_branches"] == 2
    assert report["max_abs_output"] > 0.1  # the random model did something
    assert report["relative_diff"] < 1e-5  # fp32: same video up to GEMM blocking
    assert len(report["plain"]["step_seconds"]) == len(report["cached"]["step_seconds"]) == 3
    assert report["target_steps"] == 50 and report["projected_speedup"] > 0 and report["median_speedup"] > 0
    assert set(report["provenance"]) >= {"date", "commit", "device", "torch"}


@pytest.mark.slow
def test_cache_offload_is_timed_and_gives_the_same_video(tmp_path, capsys):
    out = tmp_path / "sampling.json"
    assert cli.main(["bench", "sampling", SMOKE, "--steps", "2", "--cache-offload", "--out", str(out)]) == 0
    assert "(offloaded: host memory, streamed in per layer)" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["cache_offload"] is True and report["relative_diff"] < 1e-5


def test_wan_1_3b_plan_names_the_overrides_and_the_cache_memory(capsys):
    """The GPU command's config: the default 1.3B config
    has the full mask, so the cache needs the override."""
    assert cli.main(["bench", "sampling", WAN_1_3B, "--dtype", "bf16", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "needs model.attention.mask=context_readonly" in printed
    assert "32,760 video + 31,200 context tokens from 20 scene images" in printed
    # 2 (K, V) x 30 layers x 31,200 tokens x 1536 x 2 bytes = 5.75 GB per guidance branch.
    assert "context cache 5.75 GB per branch, 11.50 GB in all" in printed


def test_needs_a_scene_context(capsys):
    assert cli.main(["bench", "sampling", SMOKE, "model.scene.enabled=false", "--dry-run"]) == 1
    assert "no scene context to cache" in capsys.readouterr().err


def test_rejects_zero_steps(capsys):
    assert cli.main(["bench", "sampling", SMOKE, "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_asking_for_cuda_without_a_gpu_says_so(capsys):
    assert cli.main(["bench", "sampling", SMOKE, "--device", "cuda", "--dry-run"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_projection_uses_the_first_step_and_the_median_of_the_rest():
    plain = bench.Run(seconds=4.0, step_seconds=[1.0, 1.0, 1.0, 1.0])
    cached = bench.Run(seconds=2.5, step_seconds=[1.0, 0.5, 0.5, 0.5])
    assert bench.projected_speedup(plain, cached, 4) == pytest.approx(4.0 / 2.5)
    assert bench.projected_speedup(plain, cached, 50) == pytest.approx(50.0 / (1.0 + 49 * 0.5))


@pytest.mark.parametrize(
    "model,device,steps,expected",
    [
        ("tiny", "cpu", 10, "this run (tiny on cpu) does not measure it"),
        ("wan1.3b", "cuda", 10, "1.50x (projected from 10 steps)  NOT MET"),
        ("wan1.3b", "cuda", 50, "2.00x (measured)"),
    ],
)
def test_goal_line_only_claims_the_goal_for_wan_1_3b_on_a_gpu(model, device, steps, expected):
    report = dict(
        plan=dict(model=model, device=device, steps=steps),
        plain=dict(seconds=2.0),
        cached=dict(seconds=1.0),
        speedup=2.0,
        median_speedup=2.0,
        max_abs_diff=0.0,
        max_abs_output=1.0,
        relative_diff=0.0,
    )
    if steps != 50:
        report.update(target_steps=50, projected_speedup=1.5)
    assert bench.format_report(report).splitlines()[-1].endswith(expected)
