"""`cinescene sweep` on the dev cluster: one throttled job array, resubmission, status.

The sweep is configs/sweeps/smoke_lr.yaml (4 trials), run in a temporary run_root with
short trials (1 rank, a few steps). One trial is cancelled while it waits for its turn,
another while it trains; the next submission runs only those two, the one after submits
nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

STEPS = 20
SHORT = [
    "launch.nproc=1",
    f"train.max_steps={STEPS}",
    "checkpoint.every_steps=5",
    "tracking.wandb.mode=disabled",
]


def status(slurm, spec: Path, *extra: str) -> list:
    out = slurm.cinescene(["sweep", "status", str(spec), *extra, "--json"])
    return [json.loads(line) for line in out.stdout.splitlines()]


def submitted(out: str) -> str:
    match = re.search(r"submitted array job (\d+)", out)
    assert match, out
    return match.group(1)


def test_sweep_array_resubmission_and_status(slurm, repo_root, tmp_path):
    spec = yaml.safe_load((repo_root / "configs/sweeps/smoke_lr.yaml").read_text())
    spec["sweep"].update(
        base=str((repo_root / "configs/sweeps" / spec["sweep"]["base"]).resolve()),
        run_root=str(tmp_path / "sweep"),
    )
    path = tmp_path / "smoke_lr.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # the grid keeps its order

    first = slurm.cinescene(["sweep", str(path), "--max-parallel", "2", *SHORT])
    array = slurm.track(submitted(first.stdout))
    assert first.stdout.count("  submit    fresh") == 4
    rows = status(slurm, path, *SHORT)
    cancelled = rows[3]["signature"]
    slurm.cancel(f"{array}_3")  # still waiting behind the %2 throttle
    slurm.wait_for(
        "the cancelled trial to show as such",
        lambda: status(slurm, path, *SHORT)[3]["state"] == "CANCELLED",
        timeout=30,
        poll=0.5,
    )
    # A running trial cancelled while its ranks train stays cancelled: its job must not requeue itself.
    metrics = Path(rows[0]["run_dir"]) / "metrics.jsonl"
    slurm.wait_for(
        "trial 0 to train",
        lambda: metrics.exists() and metrics.read_text().count("\n") >= 2,
        timeout=300,
        poll=0.05,
    )
    slurm.cancel(f"{array}_0")
    slurm.wait(array, timeout=600, poll=0.5)  # every task that ran is over

    rows = status(slurm, path, *SHORT)
    assert [r["state"] for r in rows] == ["CANCELLED", "COMPLETED", "COMPLETED", "CANCELLED"]
    assert "requeueing" not in (Path(rows[0]["run_dir"]) / "slurm" / f"{array}_0.out").read_text()
    for row in rows[1:3]:
        assert (row["step"], row["max_steps"], row["restarts"]) == (STEPS, STEPS, 0)
        assert isinstance(row["loss"], float)
        run_dir = Path(row["run_dir"])
        assert run_dir.name == row["signature"] and (run_dir / "slurm" / f"{row['job']}.out").is_file()
        assert (
            yaml.safe_load((run_dir / "config.yaml").read_text())["tracking"]["wandb"]["group"] == "smoke-lr"
        )
    assert rows[3]["step"] is None and rows[3]["overrides"] == ["train.lr=0.0003", "train.ema.decay=0.999"]

    second = slurm.cinescene(["sweep", str(path), "--max-parallel", "2", *SHORT])
    assert (
        second.stdout.count(f"finished  step {STEPS}/{STEPS}") == 2
        and second.stdout.count("  submit    ") == 2
    )
    again = slurm.track(submitted(second.stdout))
    assert slurm.wait(again, timeout=300, poll=0.5) == "COMPLETED"
    rows = status(slurm, path, *SHORT)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 4
    assert (rows[0]["job"], rows[3]["job"]) == (f"{again}_0", f"{again}_1") and rows[3][
        "signature"
    ] == cancelled
    assert rows[3]["step"] == STEPS and rows[0]["restarts"] == 0  # the cancelled one resumed in a new job

    third = slurm.cinescene(["sweep", str(path), "--max-parallel", "2", *SHORT])
    assert "nothing to submit" in third.stdout and "submitted" not in third.stdout
    assert third.stdout.count(f"finished  step {STEPS}/{STEPS}") == 4
    # The run_root alone tells the same story, trial by trial.
    by_dir = status(slurm, tmp_path / "sweep")
    assert sorted((r["signature"], r["state"]) for r in by_dir) == sorted(
        (r["signature"], "COMPLETED") for r in rows
    )
    table = slurm.cinescene(["sweep", "status", str(path), *SHORT]).stdout
    assert table.splitlines()[1].split()[:5] == ["signature", "state", "step", "restarts", "loss"]
    assert table.count(f"COMPLETED  {STEPS}/{STEPS}") == 4
