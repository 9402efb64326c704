"""Sweep files: grid and list expansion, per-trial validation, one-line errors."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import yaml

from cinescene.config import ConfigError
from cinescene.config.sweep import expand_sweep, signature

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
        (1e-3, 0.99),
        (1e-3, 0.999),
        (3e-4, 0.99),
        (3e-4, 0.999),
    ]
    assert all(t.config.train.max_steps == 30 for t in trials)  # the sweep's shared overrides
    assert [t.config.run.dir for t in trials] == [f"runs/sweeps/smoke-lr/{t.signature}" for t in trials]
    assert len({t.signature for t in trials}) == 4 and all(len(t.signature) == 10 for t in trials)
    assert {t.config.tracking.wandb.group for t in trials} == {"smoke-lr"}
    assert trials[3].config.run.name == f"smoke-lr-{trials[3].signature}"


def test_run_directories_follow_the_overrides_not_the_grid_position(tmp_path, repo_root):
    _, before = expand_sweep(write_sweep(tmp_path, repo_root, grid={"train.lr": [1e-3, 3e-4]}))
    # A value added in front and another spelling of the same numbers: same trials, same directories.
    _, after = expand_sweep(write_sweep(tmp_path, repo_root, grid={"train.lr": ["1e-4", 0.001, "3.0e-4"]}))
    assert {t.varied[0]: t.run_dir for t in before}.items() <= {
        f"train.lr={t.config.train.lr}": t.run_dir for t in after
    }.items()
    assert after[1].run_dir == before[0].run_dir and after[0].run_dir not in {t.run_dir for t in before}
    # The order of the overrides does not matter; what they set does.
    assert signature({"a": 1, "b": "x"}) == signature({"b": "x", "a": 1}) != signature({"a": 2, "b": "x"})
    with pytest.raises(ConfigError, match="trials 0 and 1 would share"):
        expand_sweep(
            write_sweep(
                tmp_path,
                repo_root,
                trials=[
                    ["train.lr=0.001", "train.warmup_steps=3"],
                    ["train.warmup_steps=3", "train.lr=1e-3"],
                ],
            )
        )


@pytest.mark.slow
def test_random_search_is_seeded_and_grows_without_moving_trials(tmp_path, repo_root):
    space = {
        "train.lr": {"log_uniform": [1e-4, 1e-2]},
        "train.ema.decay": {"choice": [0.99, 0.999]},
        "train.warmup_steps": {"int_uniform": [0, 9]},
        "train.weight_decay": {"uniform": [0.0, 0.1]},
    }
    _, four = expand_sweep(write_sweep(tmp_path, repo_root, sample=4, seed=3, space=space))
    _, again = expand_sweep(write_sweep(tmp_path, repo_root, sample=4, seed=3, space=space))
    _, six = expand_sweep(write_sweep(tmp_path, repo_root, sample=6, seed=3, space=space))
    _, other = expand_sweep(write_sweep(tmp_path, repo_root, sample=4, seed=4, space=space))
    assert [t.varied for t in four] == [t.varied for t in again]
    assert [t.run_dir for t in six[:4]] == [t.run_dir for t in four] and len({t.run_dir for t in six}) == 6
    assert [t.varied for t in other] != [t.varied for t in four]
    for t in six:
        assert 1e-4 <= t.config.train.lr <= 1e-2 and t.config.train.ema.decay in (0.99, 0.999)
        assert 0 <= t.config.train.warmup_steps <= 9 and 0.0 <= t.config.train.weight_decay <= 0.1
    with pytest.raises(ConfigError, match="fewer than 3 distinct trials"):
        expand_sweep(write_sweep(tmp_path, repo_root, sample=3, space={"train.lr": {"choice": [0.1, 0.2]}}))


@pytest.mark.slow
def test_command_line_overrides_apply_to_every_trial_last(repo_root):
    _, plain = expand_sweep(repo_root / SWEEP)
    _, trials = expand_sweep(repo_root / SWEEP, ["train.max_steps=7", "train.warmup_steps=2"])
    assert {(t.config.train.max_steps, t.config.train.warmup_steps) for t in trials} == {(7, 2)}
    assert not {t.run_dir for t in trials} & {t.run_dir for t in plain}  # another config, other directories
    # Overriding what the grid varies leaves trials that are all the same run: refused.
    with pytest.raises(ConfigError, match="would share the run directory"):
        expand_sweep(repo_root / SWEEP, ["train.lr=0.5"])


def test_explicit_trials_and_list_values(tmp_path, repo_root):
    path = write_sweep(
        tmp_path,
        repo_root,
        trials=[["train.lr=0.1"], ["train.betas=[0.8,0.9]"]],
        run_root=str(tmp_path / "runs"),
    )
    _, trials = expand_sweep(path)
    assert trials[0].config.train.lr == 0.1 and trials[1].config.train.betas == [0.8, 0.9]
    assert trials[1].run_dir == str(tmp_path / "runs" / trials[1].signature)
    path = write_sweep(tmp_path, repo_root, grid={"train.betas": [[0.8, 0.9], [0.5, 0.6]]})
    assert [t.config.train.betas for t in expand_sweep(path)[1]] == [[0.8, 0.9], [0.5, 0.6]]


@pytest.mark.parametrize(
    "sweep, key, text",
    [
        (
            {"grid": {"train.lr": [1e-3, "abc"]}},
            "train.lr",
            "expected float, got 'abc' (sweep trial 1: train.lr=\"abc\")",
        ),
        ({"grid": {"train.lrr": [1]}}, "train.lrr", "did you mean 'train.lr'"),
        ({"grid": {"train.lr": []}}, "sweep.grid.train.lr", "a non-empty list"),
        (
            {"grid": {"train.lr": [1]}, "trials": [["train.lr=2"]]},
            "sweep.trials",
            "one of `grid`, `trials` or",
        ),
        (
            {"grid": {"train.lr": [1]}, "sample": 2, "space": {"train.lr": {"choice": [1, 2]}}},
            "sweep.sample",
            "one of `grid`, `trials` or",
        ),
        ({"sample": 2}, "sweep.space", "together with a `space:`"),
        ({"space": {"train.lr": {"choice": [1]}}}, "sweep.sample", "`sample: N`"),
        ({"sample": 2, "space": {"train.lr": {"gauss": [0, 1]}}}, "sweep.space.train.lr", "one distribution"),
        (
            {"sample": 2, "space": {"train.lr": {"uniform": [2, 1]}}},
            "sweep.space.train.lr.uniform",
            "low <= high",
        ),
        (
            {"sample": 2, "space": {"train.lr": {"log_uniform": [0, 1]}}},
            "sweep.space.train.lr.log_uniform",
            "positive",
        ),
        (
            {"sample": 2, "space": {"train.lr": {"uniform": [0, 1]}, "train.x": {"choice": [1, 2]}}},
            "train.x",
            "unknown key",
        ),
        ({"name": "a/b"}, "sweep.name", "usable as a directory name"),
        ({"base": "missing.yaml"}, "sweep.base", "missing.yaml does not exist"),
        ({"nmae": "x"}, "sweep.nmae", "unknown key (did you mean 'sweep.name'?)"),
        ({"trials": [["run.dir=same"], ["run.dir=same"]]}, "run.dir", "trials 0 and 1 would share"),
    ],
)
def test_bad_sweeps_name_the_key(tmp_path, repo_root, sweep, key, text):
    path = write_sweep(tmp_path, repo_root, **sweep)
    with pytest.raises(ConfigError) as info:
        expand_sweep(path)
    assert info.value.key == key
    assert text in str(info.value)


@pytest.mark.slow
def test_cli_dry_run_lists_trials_and_the_array_it_would_submit(repo_root, tmp_path):
    # The shipped sweep, placed in a fresh run_root (the repository's own runs/ may hold a real one).
    spec = yaml.safe_load((repo_root / SWEEP).read_text())
    spec["sweep"].update(
        base=str((repo_root / SWEEP).parent / spec["sweep"]["base"]), run_root=str(tmp_path / "sw")
    )
    path = tmp_path / "smoke_lr.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "cinescene", "sweep", str(path), *a],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = run("--max-parallel", "2", "--dry-run")
    assert out.returncode == 0, out.stderr
    _, trials = expand_sweep(path)
    assert "4 trials" in out.stdout
    assert f"{tmp_path}/sw/{trials[3].signature}  submit    fresh" in out.stdout
    call = shlex.split(next(line for line in out.stdout.splitlines() if " sbatch " in line))
    assert {"--array=0-3%2", "--job-name=smoke-lr", f"--output={tmp_path}/sw/slurm/%A_%a.out"} <= set(call)
    assert call[-2] == "--array-table"
    assert out.stdout.rstrip().endswith('exec "${CINESCENE_PYTHON:-python3}" -m cinescene slurm-job "$@"')
    assert not (tmp_path / "sw").exists()  # a dry run writes nothing
    bad = run("--dry-run", "trian.lr=1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "config error: trian:" in bad.stderr
