"""The plan against a fake-tensor trace of one training step of the real model at its real size
(`cinescene plan --trace`: FSDP2 over 8 fake ranks, FSDPMemTracker): activations and the peak within 10 %.

The 1.3B recipe (81x480x832, 20 scene images: 63,960 tokens) and the same recipe on the 14B DiT. Each
trace takes 30-60 s of CPU (minutes of wall time on a shared machine): nothing is computed, every tensor
is fake."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.checkpoint import cli_env

from .helpers import RECIPE, RECIPE_14B, REPO


@pytest.mark.slow
@pytest.mark.parametrize("path", [RECIPE, RECIPE_14B], ids=["1.3B", "14B"])
def test_plan_is_within_ten_percent_of_a_traced_step_at_real_size(path):
    cmd = [sys.executable, "-m", "cinescene", "plan", str(path), "--gpus", "8", "--trace", "--json"]
    done = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads(done.stdout)
    trace, memory = plan["trace"], plan["memory"]
    activations = memory["activations"]["peak"] / trace["activation_bytes"]
    peak = memory["peak"] / trace["peak_bytes"]
    planned_acts, traced_acts = memory["activations"]["peak"] / 1e9, trace["activation_bytes"] / 1e9
    categories = json.dumps({k: round(v / 1e9, 2) for k, v in trace["categories"].items()})
    print(
        f"{plan['model']} on 8 GPUs: activations planned {planned_acts:.2f} GB, traced {traced_acts:.2f} GB "
        f"({activations:.3f}x); peak planned {memory['peak'] / 1e9:.2f} GB, traced "
        f"{trace['peak_bytes'] / 1e9:.2f} GB ({peak:.3f}x); trace {trace['seconds']:.0f} s; "
        f"traced categories {categories}"
    )
    assert activations == pytest.approx(1.0, abs=0.10)
    assert peak == pytest.approx(1.0, abs=0.10)
