"""What a submitit submission hands to sbatch, its private job folder, and the mistakes it refuses (no
cluster needed: nothing is submitted). The jobs themselves run in tests/slurm/test_submitit_jobs.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import cinescene.slurm
from cinescene.config import ConfigError, load_config
from cinescene.errors import CineSceneError
from cinescene.slurm.submitit_jobs import folder_check, job_folder, private_folder, sbatch_parameters

SMOKE = "configs/experiments/smoke.yaml"


def cli(repo_root, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "cinescene", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.slow  # starts `cinescene submit`
def test_dry_run_prints_submitits_script_running_our_batch_side_without_srun(repo_root, tmp_path):
    run_dir = tmp_path / "run"
    out = cli(
        repo_root, "submit", SMOKE, f"run.dir={run_dir}", "--nodes", "2", "--via", "submitit", "--dry-run"
    )
    assert out.returncode == 0, out.stderr
    script = out.stdout
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=00:30:00",
        "#SBATCH --signal=USR1@60",
        "#SBATCH --requeue",
        "#SBATCH --job-name=smoke",
        f"#SBATCH --output={run_dir}/slurm/submitit/%j_0_log.out",
        f"#SBATCH --chdir={repo_root}",
        f"-m submitit.core._submit {run_dir}/slurm/submitit",
    ]:
        assert line in script, line
    assert "srun" not in script and "--error" not in script  # the job function is the batch process
    assert script.index("stat -c %u:%a") < script.index("submitit.core._submit")  # checked before loading
    assert not run_dir.exists()  # a dry run writes nothing


def test_the_options_are_the_ones_cinescene_submit_gives_sbatch(repo_root):
    cfg, _ = load_config(repo_root / SMOKE, ["launch.slurm.extra=[--exclusive,--constraint=cpu]"])
    parameters = sbatch_parameters(cfg.launch)
    assert parameters["exclusive"] is True and parameters["constraint"] == "cpu"
    assert (
        parameters["ntasks_per_node"] == "2" and parameters["signal"] == "USR1@60" and parameters["requeue"]
    )


def test_the_job_folder_is_private_and_never_a_symlink_or_someone_elses(tmp_path):
    folder = job_folder(tmp_path / "run")
    assert private_folder(folder) == folder and oct(folder.stat().st_mode & 0o777) == "0o700"
    folder.chmod(0o775)
    private_folder(folder)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = job_folder(tmp_path / "linked")
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    with pytest.raises(CineSceneError, match="must be a directory of your own"):
        private_folder(link)


@pytest.mark.parametrize("mode, ok", [(0o700, True), (0o750, False), (0o777, False)])
def test_the_batch_scripts_first_line_refuses_a_folder_others_may_write(tmp_path, mode, ok):
    folder = tmp_path / "submitit"
    folder.mkdir()
    folder.chmod(mode)
    out = subprocess.run(
        ["bash", "-c", folder_check(folder) + "; echo loaded"], capture_output=True, text=True
    )
    assert (out.returncode, out.stdout.strip()) == ((0, "loaded") if ok else (1, ""))
    if not ok:
        assert out.stderr.strip() == (
            f"cinescene: error: {folder} is not a private (0700) directory of this user: "
            "refusing to load the job's pickle from it"
        )
    link = tmp_path / "link"
    link.symlink_to(folder)
    assert subprocess.run(["bash", "-c", folder_check(link)], capture_output=True).returncode == 1


@pytest.mark.slow  # starts `cinescene submit` twice
def test_mistakes_are_refused_before_anything_is_written(repo_root, tmp_path):
    with pytest.raises(ConfigError) as info:
        cinescene.slurm.submit(repo_root / SMOKE, [f"run.dir={tmp_path / 'r'}"], nodes=0)
    assert info.value.key == "launch.slurm.nodes"
    with pytest.raises(ConfigError) as info:
        cinescene.slurm.submit(repo_root / SMOKE, [f"run.dir={tmp_path / 'r'}"], gpus=1)
    assert info.value.key.startswith("launch.slurm")
    with pytest.raises(ConfigError) as info:
        cinescene.slurm.sweep(repo_root / "configs/sweeps/smoke_lr.yaml", max_parallel=0)
    assert info.value.key == "max_parallel"
    assert not (tmp_path / "r").exists()
    out = cli(repo_root, "submit", SMOKE, "--via", "ssh")
    assert out.returncode == 2 and "--via: invalid choice: 'ssh'" in out.stderr
    percent = cli(
        repo_root, "submit", SMOKE, f"run.dir={tmp_path / '100%'}", "--via", "submitit", "--dry-run"
    )
    assert percent.returncode == 1 and percent.stderr.count("\n") == 1 and "'%'" in percent.stderr


@pytest.mark.slow  # starts `cinescene submit`
def test_without_a_slurm_client_the_submission_is_one_line(repo_root, tmp_path):
    env = {"PATH": os.path.dirname(sys.executable), "HOME": str(tmp_path)}  # python, but no srun or sbatch
    out = cli(repo_root, "submit", SMOKE, f"run.dir={tmp_path / 'r'}", "--via", "submitit", env=env)
    assert out.returncode == 1 and out.stderr.strip() == (
        "cinescene submit: error: `srun` is not on PATH: submitting needs a SLURM client"
    )
