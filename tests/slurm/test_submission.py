"""What `cinescene submit` / `sweep` would hand to sbatch, and the configs they refuse (no cluster needed).

These run everywhere in seconds: the sbatch call is built and printed (--dry-run), never
submitted. The `slurm`-marked tests next to them submit for real.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from cinescene.config import ConfigError, load_config
from cinescene.config.launch import LaunchConfig
from cinescene.distributed.slurm_env import job_label, restart_count
from cinescene.slurm.accounting import parse_rows
from cinescene.slurm.job import decide
from cinescene.slurm.sweeps import array_task

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


def sbatch_argv(out: str):
    """The sbatch arguments of a --dry-run's first line (after the environment assignment)."""
    words = shlex.split(out.splitlines()[0])
    return words[words.index("sbatch") :]


def test_a_signal_that_cannot_be_caught_is_one_line_exit_2_before_any_rank(repo_root, tmp_path):
    run_dir = tmp_path / "run"
    out = cli(repo_root, "train", SMOKE, "launch.preempt_signals=[SIGUSR1,SIGKILL]", f"run.dir={run_dir}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == (
        "cinescene train: config error: launch.preempt_signals[1]: expected the name of a "
        "signal a process can catch, such as 'SIGUSR1' (not SIGKILL or SIGSTOP), got 'SIGKILL'\n"
    )
    assert not run_dir.exists()  # refused while validating: nothing started, nothing written


@pytest.mark.parametrize(
    "override, key",
    [
        ("launch.preempt_signals=[SIGFOO]", "launch.preempt_signals[0]"),
        ("launch.preempt_signals=[SIGSTOP]", "launch.preempt_signals[0]"),
        ("launch.preempt_signals=[USR1]", "launch.preempt_signals[0]"),
        ("launch.preempt_signals=[SIGUSR1,7]", "launch.preempt_signals[1]"),
        (
            "launch.slurm.signal=HUP@60",
            "launch.slurm.signal",
        ),  # not a preemption signal: would kill the ranks
        ("launch.slurm.signal=USR1", "launch.slurm.signal"),
        ("launch.slurm.time=tomorrow", "launch.slurm.time"),
        ("launch.slurm.mem=lots", "launch.slurm.mem"),
        ("launch.slurm.partition='a b'", "launch.slurm.partition"),
        ("launch.preempt_exit_code=1", "launch.preempt_exit_code"),
        ("launch.max_restarts=-1", "launch.max_restarts"),
        *[
            (f"launch.slurm.extra=[{json.dumps(line)}]", "launch.slurm.extra[0]")
            for line in [
                "rm -rf /",
                "-p debug",
                "--",
                "--constraint=a\nb",
                "#SBATCH --mem=1G",
                "--x; touch PWNED",
            ]
        ],
    ],
)
def test_bad_launch_values_name_their_key(repo_root, override, key):
    with pytest.raises(ConfigError) as info:
        load_config(repo_root / SMOKE, [override])
    assert info.value.key == key


def test_extra_lines_are_refused_by_submit_with_exit_2(repo_root):
    out = cli(repo_root, "submit", SMOKE, 'launch.slurm.extra=["--constraint=h100", "rm -rf /"]', "--dry-run")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        "cinescene submit: config error: launch.slurm.extra[1]: expected one sbatch option "
        "'--option' or '--option=value' on one line, got 'rm -rf /'\n"
    )


@pytest.mark.slow  # starts `cinescene submit`
def test_flags_override_the_config_and_reach_the_job_as_the_same_overrides(repo_root):
    out = cli(
        repo_root,
        "submit",
        SMOKE,
        "train.lr=3e-4",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--partition",
        "gpu",
        "--time",
        "1:30",
        "--account",
        "proj",
        "--qos",
        "high",
        "--dry-run",
    )
    assert out.returncode == 0, out.stderr
    argv = sbatch_argv(out.stdout)
    for option in [
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--time=1:30",
        "--account=proj",
        "--qos=high",
        "--job-name=smoke",
        "--requeue",
        "--signal=USR1@60",
    ]:
        assert option in argv, (option, argv)
    script = argv.index(next(a for a in argv if a.endswith("train.sbatch")))
    job_args = argv[script + 1 :]
    assert job_args[:2] == [SMOKE, "train.lr=3e-4"]
    # The job resolves the very config the submission was checked against ("1:30" stays a string).
    cfg, _ = load_config(repo_root / job_args[0], job_args[1:])
    assert (cfg.launch.slurm.nodes, cfg.launch.slurm.time, cfg.launch.slurm.partition) == (2, "1:30", "gpu")
    assert out.stdout.count("#!/bin/bash") == 1  # the batch script follows the call


@pytest.mark.slow  # starts `cinescene submit`
def test_cpu_job_runs_nproc_tasks_per_node_and_no_gpu_request(repo_root):
    out = cli(
        repo_root,
        "submit",
        SMOKE,
        "--gpus-per-node",
        "0",
        "launch.nproc=3",
        "launch.slurm.mem=4G",
        "launch.slurm.requeue=false",
        "launch.slurm.extra=[--constraint=cpu,--exclusive]",
        "--dry-run",
    )
    argv = sbatch_argv(out.stdout)
    assert "--ntasks-per-node=3" in argv and not any(a.startswith("--gpus") for a in argv)
    assert {"--mem=4G", "--no-requeue", "--constraint=cpu", "--exclusive"} <= set(argv)


@pytest.mark.slow  # starts `cinescene submit` twice
def test_print_config_and_no_submission_without_sbatch(repo_root, tmp_path):
    out = cli(repo_root, "submit", SMOKE, "--nodes", "3", "--print-config")
    assert out.returncode == 0 and "nodes: 3" in out.stdout
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no sbatch on PATH
    out = cli(repo_root, "submit", SMOKE, f"run.dir={tmp_path / 'r'}", env=env)
    assert out.returncode == 1 and out.stderr.strip() == (
        "cinescene submit: error: `sbatch` is not on PATH: submitting needs a SLURM client"
    )


def test_slurm_job_outside_a_batch_job_is_one_line(repo_root):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SLURM_")}
    out = cli(repo_root, "slurm-job", SMOKE, env=env)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "runs as the batch script of a SLURM job" in out.stderr


def test_exactly_one_party_requeues():
    cfg, _ = load_config(None, [])
    assert decide(0, None, cfg, "7") == (False, "the ranks finished")
    assert decide(124, None, cfg, "7")[0]  # saved after USR1 / the time-limit warning
    assert decide(137, None, cfg, "7")[0]  # a rank was killed: restart from the checkpoint
    assert not decide(124, "SIGTERM", cfg, "7")[0]  # SLURM is ending the job: it requeues, or not
    assert not decide(137, "SIGTERM", cfg, "7")[0]
    assert not decide(1, None, cfg, "7")[0] and not decide(2, None, cfg, "7")[0]
    cfg.launch.slurm.requeue = False
    assert not decide(124, None, cfg, "7")[0]


def test_the_ranks_rendezvous_comes_from_the_allocation_not_the_submitting_shell(monkeypatch):
    """sbatch exports the submitter's environment: a MASTER_PORT or RANK there must not reach the ranks."""
    from cinescene.distributed.env import detect, slurm_master_port
    from cinescene.slurm import job

    monkeypatch.setattr(job, "node_address", lambda node: {"n1": "10.0.0.1"}[node])
    inherited = {
        "SLURM_JOB_ID": "4242",
        "MASTER_PORT": "49897",
        "MASTER_ADDR": "elsewhere",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "PATH": "/usr/bin",
        "SLURM_CPUS_PER_TASK": "3",
    }
    env = job.step_environment(inherited, ["n1", "n2"])
    assert env["MASTER_ADDR"] == "10.0.0.1" and env["MASTER_PORT"] == str(slurm_master_port(4242)) != "49897"
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK"} & set(env) and env["PATH"] == "/usr/bin"
    assert env["OMP_NUM_THREADS"] == "3" and inherited["MASTER_PORT"] == "49897"  # the job's own is untouched
    rank = detect(
        {
            **env,
            "SLURM_PROCID": "1",
            "SLURM_NTASKS": "2",
            "SLURM_JOB_NODELIST": "n[1-2]",
            "SLURM_STEP_ID": "0",
            "SLURM_LOCALID": "0",
        }
    )
    assert rank.launcher == "srun" and rank.rank == 1 and rank.master_port == slurm_master_port(4242)


def test_job_environment_readers():
    assert restart_count({}) == 0 and restart_count({"SLURM_RESTART_COUNT": "3"}) == 3
    assert job_label({"SLURM_JOB_ID": "12"}) == "12"
    assert job_label({"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3"}) == "12_3"


def test_squeue_and_sacct_rows_expand_array_ranges():
    rows = ["12_0|COMPLETED", "12_1|CANCELLED by 0", "12_[2-4,6%2]|PENDING", "13|RUNNING", "14|"]
    assert parse_rows(rows) == {
        "12_0": "COMPLETED",
        "12_1": "CANCELLED",
        "12_2": "PENDING",
        "12_3": "PENDING",
        "12_4": "PENDING",
        "12_6": "PENDING",
        "13": "RUNNING",
        "14": "UNKNOWN",
    }


@pytest.mark.parametrize(
    "table, message",
    [
        ({"sweep": "s"}, "is not a sweep's array table"),
        ({"trials": [{"argv": ["c.yaml"]}]}, "there is no array task 1"),
        (
            {"trials": [{"argv": ["c.yaml"]}, {"argv": "c.yaml x=1"}]},
            "trial 1 has no [config, overrides...] argv",
        ),
    ],
)
def test_array_tables_are_checked_data(tmp_path, table, message):
    from cinescene.errors import CineSceneError

    path = tmp_path / "array.json"
    path.write_text(json.dumps(table))
    with pytest.raises(CineSceneError, match=re.escape(message)):
        array_task(path, 1)
    path.write_text(json.dumps({"trials": [{"argv": ["c.yaml", "a=1"]}, {"argv": ["c.yaml", "a=2"]}]}))
    assert array_task(path, 1) == ["c.yaml", "a=2"]
    path.write_text("{not json")
    with pytest.raises(CineSceneError, match="is not a sweep's array table"):
        array_task(path, 0)


def test_sweep_bad_max_parallel_and_status_without_target(repo_root):
    out = cli(repo_root, "sweep", "configs/sweeps/smoke_lr.yaml", "--max-parallel", "0", "--dry-run")
    assert out.returncode == 2 and "--max-parallel" in out.stderr
    out = cli(repo_root, "sweep", "status")
    assert out.returncode == 2 and "SPEC|DIR" in out.stderr


def test_launch_config_defaults_validate():
    launch = LaunchConfig()
    launch.slurm.validate()
    launch.validate()
    assert launch.slurm.signal_name() == "SIGUSR1"


def test_status_of_a_sweep_never_submitted_and_of_a_directory_that_is_not_one(repo_root, tmp_path):
    spec = yaml.safe_load((repo_root / "configs/sweeps/smoke_lr.yaml").read_text())
    spec["sweep"].update(
        base=str(repo_root / "configs/experiments/smoke.yaml"), run_root=str(tmp_path / "sw")
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = cli(repo_root, "sweep", "status", str(path), "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["state"], r["job"], r["step"], r["max_steps"]) for r in rows] == [("-", None, None, 30)] * 4
    out = cli(repo_root, "sweep", "status", str(tmp_path))
    assert out.returncode == 1 and "holds no sweep trials" in out.stderr and out.stderr.count("\n") == 1


def test_two_submissions_of_one_sweep_at_once_the_second_is_refused(repo_root, tmp_path):
    import fcntl

    spec = yaml.safe_load((repo_root / "configs/sweeps/smoke_lr.yaml").read_text())
    spec["sweep"].update(
        base=str(repo_root / "configs/experiments/smoke.yaml"), run_root=str(tmp_path / "sw")
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp_path / "sw" / "slurm").mkdir(parents=True)
    with open(tmp_path / "sw" / "slurm" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a first `cinescene sweep` submitting right now would
        out = cli(repo_root, "sweep", str(path))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(
        f"cinescene sweep: error: another `cinescene sweep` is submitting {tmp_path / 'sw'} right now ("
    )
    assert len(out.stderr.splitlines()) == 1


def test_a_step_that_ended_after_a_preemption_save_counts_as_saved(tmp_path):
    """srun --kill-on-bad-exit stops ranks still leaving after the first one exits 124: the step's status is
    then 143, but the checkpoint they saved together says it was a preemption save."""
    from cinescene.ckpt.locate import latest_step_dir
    from cinescene.slurm.job import _saved_on_preemption
    from tests.ckpt.fakes import record

    root = tmp_path / "checkpoints"
    assert latest_step_dir(root) is None and not _saved_on_preemption(root, None)

    def save(step: int, reason: str) -> None:
        step_dir = root / f"step_{step:08d}"
        step_dir.mkdir(parents=True)
        (step_dir / "trainer_state.json").write_text(record(step, reason=reason).to_json())
        (root / "latest").write_text(step_dir.name)

    save(10, "every_steps")
    before = latest_step_dir(root)
    assert before == root / "step_00000010" and not _saved_on_preemption(root, None)  # not a preemption save
    save(14, "preemption")
    assert _saved_on_preemption(root, before) and not _saved_on_preemption(root, latest_step_dir(root))
    (root / "step_00000014" / "trainer_state.json").write_text("{")  # damaged: not counted
    assert not _saved_on_preemption(root, before)


def test_a_sweep_whose_trials_share_a_checkpoint_directory_is_refused(repo_root, tmp_path):
    """Two trials writing one checkpoint directory would delete each other's saves and resume from each
    other's steps; two spellings of one directory (./, a trailing slash) are one directory."""
    path = tmp_path / "sweep.yaml"
    trials = [
        ["train.lr=0.001", f"checkpoint.dir={tmp_path}/shared"],
        ["train.lr=0.0003", f"checkpoint.dir={tmp_path}/./shared/"],
    ]
    sweep = {"name": "s", "base": str(repo_root / SMOKE), "run_root": str(tmp_path / "sw"), "trials": trials}
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    out = cli(repo_root, "sweep", str(path), "--dry-run")
    assert out.returncode == 2 and out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
    assert f"checkpoint.dir: sweep trials 0 and 1 would share the checkpoint directory {tmp_path}/shared" in (
        out.stderr
    )
    trials[1][1] = f"checkpoint.dir={tmp_path}/own"
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    assert cli(repo_root, "sweep", str(path), "--dry-run").returncode == 0


def test_sweep_status_reads_the_rows_a_crash_left(repo_root, tmp_path):
    """A metrics.jsonl whose last line a crash cut short: status shows the last complete row."""
    run_dir = tmp_path / "sw" / "trial"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "slurm" / "trial.json").write_text(json.dumps({"signature": "trial", "max_steps": 9}))
    rows = [{"step": 1, "loss": 0.5, "restarts": 0}, {"step": 2, "loss": 0.25, "restarts": 1}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    out = cli(repo_root, "sweep", "status", str(tmp_path / "sw"), "--json")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (row["step"], row["loss"], row["restarts"], row["max_steps"]) == (2, 0.25, 1, 9)
