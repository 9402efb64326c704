"""Sweep files: grid and list expansion, per-trial validation, one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cinescene.config import ConfigError
from cinescene.config.sweep import expand_sweep

SWEEP = "configs/sweeps/smoke_lr.yaml"


def write_sweep(tmp_path, repo_root, **sweep):
    sweep.setdefault("name", "s")
    sweep.setdefault("base", str(repo_root / "configs/experiments/smoke.yaml"))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    return path


def test_grid_is_the_cartesian_product_in_file_order(repo_root):
    spec, trials = expand_sweep(repo_root / SWEEP)
    assert spec.name == "smoke-lr" and len(trials) == 4
    assert [(t.config.train.lr, t.config.train.ema.decay) for t in trials] == [
        (1e-3, 0.99), (1e-3, 0.999), (3e-4, 0.99), (3e-4, 0.999)]
    assert all(t.config.train.max_steps == 30 for t in trials)  # the sweep's shared overrides
    assert [t.config.run.dir for t in trials] == [f"runs/sweeps/smoke-lr/{i:03d}" for i in range(4)]
    assert {t.config.tracking.wandb.group for t in trials} == {"smoke-lr"}
    assert trials[3].config.run.name == "smoke-lr-003"


def test_command_line_overrides_apply_to_every_trial_last(repo_root):
    _, trials = expand_sweep(repo_root / SWEEP, ["train.max_steps=7", "train.lr=0.5"])
    assert {(t.config.train.max_steps, t.config.train.lr) for t in trials} == {(7, 0.5)}


def test_explicit_trials_and_list_values(tmp_path, repo_root):
    path = write_sweep(tmp_path, repo_root, trials=[["train.lr=0.1"], ["train.betas=[0.8,0.9]"]],
                       run_root=str(tmp_path / "runs"))
    _, trials = expand_sweep(path)
    assert trials[0].config.train.lr == 0.1 and trials[1].config.train.betas == [0.8, 0.9]
    assert trials[1].run_dir == str(tmp_path / "runs" / "001")
    path = write_sweep(tmp_path, repo_root, grid={"train.betas": [[0.8, 0.9], [0.5, 0.6]]})
    assert [t.config.train.betas for t in expand_sweep(path)[1]] == [[0.8, 0.9], [0.5, 0.6]]


@pytest.mark.parametrize("sweep, key, text", [
    ({"grid": {"train.lr": [1e-3, "abc"]}}, "train.lr", "expected float, got 'abc' (sweep trial 1: train.lr=abc)"),
    ({"grid": {"train.lrr": [1]}}, "train.lrr", "did you mean 'train.lr'"),
    ({"grid": {"train.lr": []}}, "sweep.grid.train.lr", "a non-empty list"),
    ({"grid": {"train.lr": [1]}, "trials": [["train.lr=2"]]}, "sweep.trials", "either `grid` or `trials`"),
    ({"name": "a/b"}, "sweep.name", "usable as a directory name"),
    ({"base": "missing.yaml"}, "sweep.base", "training config not found"),
    ({"nmae": "x"}, "sweep.nmae", "unknown key (did you mean 'sweep.name'?)"),
    ({"trials": [["run.dir=same"], ["run.dir=same"]]}, "run.dir", "trials 0 and 1 would share"),
])
def test_bad_sweeps_name_the_key(tmp_path, repo_root, sweep, key, text):
    path = write_sweep(tmp_path, repo_root, **sweep)
    with pytest.raises(ConfigError) as info:
        expand_sweep(path)
    assert info.value.key == key
    assert text in str(info.value)


def test_cli_dry_run_lists_trials_and_submission_is_not_built(repo_root):
    run = lambda *a: subprocess.run([sys.executable, "-m", "cinescene", "sweep", SWEEP, *a], cwd=repo_root,
                                    capture_output=True, text=True, timeout=120)
    out = run("--dry-run")
    assert out.returncode == 0, out.stderr
    assert "4 trials" in out.stdout and "runs/sweeps/smoke-lr/003  train.lr=0.0003 train.ema.decay=0.999" in out.stdout
    bad = run("--dry-run", "trian.lr=1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "config error: trian:" in bad.stderr
    pending = run()
    assert pending.returncode == 3 and "nothing was submitted" in pending.stderr
