"""kernels/attention/gpu_check.sh: the GPU session's one command. Its --dry-run runs every step in its CPU
form (the interpreter sweep, the sampling plan of the 1.3B config and the tiny model for real, a training step
of the tiny model, the gpu-marked tests, which skip), so the script itself is exercised before a GPU session
depends on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = "kernels/attention/gpu_check.sh"


def test_usage_error_without_an_output_directory(repo_root):
    result = subprocess.run(["bash", SCRIPT], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU form")
def test_dry_run_runs_every_step(repo_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # set by the kernels conftest
    env["PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", SCRIPT, "--dry-run", str(tmp_path)],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    for step in ("attention", "sampling", "sampling_smoke", "step", "pytest"):
        assert f"== {step}: ok" in summary, summary
    assert "5.75 GB per branch" in (tmp_path / "sampling.log").read_text()
    assert json.loads((tmp_path / "sampling_smoke.json").read_text())["relative_diff"] < 1e-5
    assert all(case["passed"] for case in json.loads((tmp_path / "attention_check.json").read_text()))
    assert "skipped" in (tmp_path / "pytest.log").read_text()
    bench_step = json.loads((tmp_path / "bench_step" / "bench_step.json").read_text())
    assert bench_step["device"] == "cpu" and bench_step["planned_growth_bytes"] > 0
