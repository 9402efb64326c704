"""The plan against real 2-rank ZeRO-3 steps on the CPU (`cinescene bench step`): a step's memory growth
within 15 % of the plan's, and one step's communication within 10 % of the plan's volume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.checkpoint import cli_env

from .helpers import REPO, SMOKE

# A small CineScene (the tiny model at width 256, 2 blocks; 17 frames at 128x128 with 6 scene images:
# 1,280 video + 1,536 context tokens), big enough that a step's activations dwarf the resident set's noise.
SMALL = [
    "model.dim=256",
    "model.ffn_dim=1024",
    "model.num_heads=4",
    "model.num_layers=2",
    "data.synth.frames=17",
    "data.synth.size=[128,128]",
    "train.micro_batch_size=1",
]
CASES = {
    "data-parallel, activation checkpointing": ["model.activation_checkpointing=true"],
    "sequence-parallel": ["parallel.sequence=2"],
}


@pytest.fixture(scope="module", params=list(CASES))
def bench(request, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench_step")
    cmd = [sys.executable, "-m", "cinescene", "bench", "step", str(SMOKE), *SMALL, *CASES[request.param]]
    cmd += ["--nproc", "2", "--warmup", "2", "--steps", "1", "--out", str(out), "--json"]
    done = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    report["case"] = request.param
    return report


@pytest.mark.slow
@pytest.mark.dist
def test_a_real_zero3_steps_memory_growth_is_the_planned(bench):
    print(
        f"{bench['case']}: a step grew rank 0's resident set by {bench['memory_growth_bytes']:,} bytes; "
        f"planned {bench['planned_growth_bytes']:,}: measured/planned {bench['growth_ratio']:.3f}"
    )
    assert bench["memory_growth_bytes"] > 100e6  # activations, not noise
    assert bench["growth_ratio"] == pytest.approx(1.0, abs=0.15)


@pytest.mark.slow
@pytest.mark.dist
def test_a_real_zero3_steps_communication_is_the_planned_volume(bench):
    measured, planned = bench["comm_sent_bytes"], bench["planned_comm_sent_bytes"]
    print(f"{bench['case']}: sent per step {measured}; planned {planned}; ratio {bench['comm_ratio']:.3f}")
    assert bench["comm_ratio"] == pytest.approx(1.0, abs=0.10)
    for kind, volume in planned.items():
        if volume > 0.05 * sum(planned.values()):  # each collective that matters, on its own
            assert measured.get(kind, 0) == pytest.approx(volume, rel=0.10), kind
