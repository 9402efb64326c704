"""`cinescene sweep` on the dev cluster: one throttled job array, resubmission, status.

The sweep is configs/sweeps/smoke_lr.yaml (4 trials), run in a temporary run_root with
short trials (1 rank, a few steps). One trial is cancelled while it waits for its turn;
the next submission runs only that one, the one after submits nothing.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slurm

SHORT = ["launch.nproc=1", "train.max_steps=6", "checkpoint.every_steps=3", "tracking.wandb.mode=disabled"]


def status(slurm, spec: Path, *extra: str) -> list:
    out = slurm.cinescene(["sweep", "status", str(spec), *extra, "--json"])
    return [json.loads(line) for line in out.stdout.splitlines()]


def submitted(out: str) -> str:
    match = re.search(r"submitted array job (\d+)", out)
    assert match, out
    return match.group(1)


def test_sweep_array_resubmission_and_status(slurm, repo_root, tmp_path):
    spec = yaml.safe_load((repo_root / "configs/sweeps/smoke_lr.yaml").read_text())
    spec["sweep"].update(base=str((repo_root / "configs/sweeps" / spec["sweep"]["base"]).resolve()),
                         run_root=str(tmp_path / "sweep"))
    path = tmp_path / "smoke_lr.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # the grid keeps its order

    first = slurm.cinescene(["sweep", str(path), "--max-parallel", "2", *SHORT])
    array = slurm.track(submitted(first.stdout))
    assert first.stdout.count("submit    fresh") == 4
    rows = status(slurm, path, *SHORT)
    cancelled = rows[3]["signature"]
    slurm.cancel(f"{array}_3")  # still waiting behind the %2 throttle
    slurm.wait_for("the cancelled trial to show as such", lambda: status(slurm, path, *SHORT)[3]["state"] ==
                   "CANCELLED", timeout=30, poll=0.5)
    slurm.wait(array, timeout=600, poll=0.5)  # every task that ran is over

    rows = status(slurm, path, *SHORT)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 3 + ["CANCELLED"]
    for row in rows[:3]:
        assert (row["step"], row["max_steps"], row["restarts"]) == (6, 6, 0) and isinstance(row["loss"], float)
        run_dir = Path(row["run_dir"])
        assert run_dir.name == row["signature"] and (run_dir / "slurm" / f"{row['job']}.out").is_file()
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["tracking"]["wandb"]["group"] == "smoke-lr"
    assert rows[3]["step"] is None and rows[3]["overrides"] == ["train.lr=0.0003", "train.ema.decay=0.999"]

    second = slurm.cinescene(["sweep", str(path), "--max-parallel", "2", *SHORT])
    assert second.stdout.count("finished  step 6/6") == 3 and second.stdout.count("submit    fresh") == 1
    again = slurm.track(submitted(second.stdout))
    assert slurm.wait(again, timeout=300, poll=0.5) == "COMPLETED"
    rows = status(slurm, path, *SHORT)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 4
    assert rows[3]["job"] == f"{again}_0" and rows[3]["signature"] == cancelled and rows[3]["step"] == 6

    third = slurm.cinescene(["sweep", str(path), "--max-parallel", "2", *SHORT])
    assert "nothing to submit" in third.stdout and "submitted" not in third.stdout
    assert third.stdout.count("finished  step 6/6") == 4
    # The run_root alone tells the same story, trial by trial.
    by_dir = status(slurm, tmp_path / "sweep")
    assert sorted((r["signature"], r["state"]) for r in by_dir) == sorted((r["signature"], "COMPLETED") for r in rows)
    table = slurm.cinescene(["sweep", "status", str(path), *SHORT]).stdout
    assert table.splitlines()[1].split()[:5] == ["signature", "state", "step", "restarts", "loss"]
    assert table.count("COMPLETED  6/6") == 4
