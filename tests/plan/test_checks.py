"""`cinescene plan` on the command line; the start-up memory check of `cinescene train` and the preemption
check of `cinescene submit`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from cinescene.plan import fit_warning, preemption_warning
from tests.fixtures.checkpoint import cli_env

from .helpers import RECIPE, RECIPE_14B, REPO, config

H100 = 81559 * 2**20


def _cinescene(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cinescene", *args]
    return subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two `cinescene plan` processes
def test_plan_prints_the_breakdown_and_the_verdict_and_json_gives_the_same_numbers():
    started = time.perf_counter()
    text = _cinescene("plan", str(RECIPE), "--gpus", "8")
    print(f"cinescene plan (1.3B recipe, 8 GPUs): {time.perf_counter() - started:.1f} s wall on this machine")
    assert text.returncode == 0 and text.stderr == "", text.stderr
    assert "verdict: FITS" in text.stdout and "one block recomputed" in text.stdout
    out = _cinescene("plan", str(RECIPE), "--gpus", "8", "--json")
    data = json.loads(out.stdout)
    assert data["fits"] is True and data["gpus"] == 8
    assert f"peak {data['memory']['peak'] / 1e9:.2f} GB" in text.stdout
    assert f"GB usable, headroom {data['headroom_bytes'] / 1e9:.2f} GB" in text.stdout


@pytest.mark.slow  # one `cinescene plan` process per case
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "0"], "argument --gpus: expected a whole number >= 1, got '0'"),
        (["--gpus", "8", "--gpu-memory", "lots"], "argument --gpu-memory: expected a size"),
        (["--gpus", "8", "--gpu-memory", "1GB"], "config error: --gpu-memory: 1 GB leaves nothing"),
        (["--gpus", "8", "--tflops", "nan"], "argument --tflops: expected a number > 0, got 'nan'"),
        (["--gpus", "8", "plan.fragmentation=2"], "config error: plan.fragmentation: expected a value in"),
        (
            ["--gpus", "8", "plan.achieved_tflops=0"],
            "config error: plan.achieved_tflops: expected a value > 0",
        ),
    ],
)
def test_plan_refuses_bad_input_in_one_line(args, message):
    done = _cinescene("plan", str(RECIPE), *args)
    assert done.returncode == 2
    assert (
        message in done.stderr
        and len(done.stderr.strip().splitlines()[-1])
        and "Traceback" not in done.stderr
    )


def test_fit_warning_names_what_fits():
    assert fit_warning(config(RECIPE), 8, H100) is None
    warning = fit_warning(config(RECIPE_14B), 8, H100, "NVIDIA H100 80GB HBM3")
    assert "does not fit the NVIDIA H100 80GB HBM3" in warning and "parallel.sequence=2" in warning
    assert "\n" not in warning


def test_train_warns_at_start_up_on_a_gpu_it_does_not_fit(monkeypatch):
    import torch

    from cinescene.train import preflight

    props = SimpleNamespace(total_memory=H100, name="NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _: props)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("cinescene.train")
    logger.addHandler(handler)
    try:
        preflight.warn_if_it_will_not_fit(config(RECIPE), 8)
        assert not records
        preflight.warn_if_it_will_not_fit(config(RECIPE_14B), 8)
    finally:
        logger.removeHandler(handler)
    [record] = records
    assert "does not fit the NVIDIA H100 80GB HBM3" in record.getMessage()


@pytest.mark.slow  # starts `cinescene submit`
def test_submit_warns_when_the_signal_lead_is_shorter_than_a_step_and_a_save():
    warning = preemption_warning(config(RECIPE_14B), 8)
    assert "launch.slurm.signal=USR1@180 warns 180 s before the time limit" in warning
    assert preemption_warning(config(RECIPE_14B, "launch.slurm.signal=USR1@600"), 8) is None
    assert preemption_warning(config(RECIPE_14B, "plan.checkpoint_write_gbps=20"), 8) is None
    assert preemption_warning(config(RECIPE), 8) is None
    done = _cinescene("submit", str(RECIPE_14B), "--dry-run")
    assert done.returncode == 0
    [line] = [line for line in done.stderr.splitlines() if "warning" in line]
    assert line.startswith("cinescene submit: warning: launch.slurm.signal=USR1@180")
