"""Rank discovery (torchrun / srun / batch script / standalone), gloo's interface, and the local spawner's
signals and statuses."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from cinescene.distributed.env import detect, slurm_master_port
from cinescene.distributed.network import bind_gloo_towards_master, interface_towards
from cinescene.distributed.spawn import spawn_local_ranks
from cinescene.errors import CineSceneError

from .conftest import REPO


def test_torchrun_environment():
    env = detect(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "node7",
            "MASTER_PORT": "29555",
        }
    )
    assert (
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        env.master_addr,
        env.master_port,
        env.launcher,
    ) == (3, 8, 1, 2, "node7", 29555, "torchrun")


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    script = tmp_path / "scontrol"
    script.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'gpu003\\ngpu004\\n'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")


def test_srun_environment(fake_scontrol):
    env = detect(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_STEP_ID": "0",
            "SLURM_JOB_ID": "123456",
            "SLURM_JOB_NODELIST": "gpu[003-004]",
            "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
        }
    )
    assert (
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        env.master_addr,
        env.launcher,
    ) == (5, 8, 1, 4, "gpu003", "srun")
    assert env.master_port == slurm_master_port(123456) and 20000 <= env.master_port < 30000


def test_a_batch_script_alone_is_not_a_rank():
    # sbatch sets SLURM_PROCID/NTASKS for the batch shell too; without a job step we spawn locally.
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}) is None
    assert detect({}) is None


def test_srun_without_scontrol_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CineSceneError, match="scontrol"):
        detect(
            {
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "2",
                "SLURM_STEP_ID": "0",
                "SLURM_JOB_ID": "1",
                "SLURM_JOB_NODELIST": "n[1-2]",
            }
        )


def test_gloo_binds_the_interface_that_reaches_the_master_unless_told():
    assert interface_towards("127.0.0.1") == "lo"
    env = {}
    assert bind_gloo_towards_master("127.0.0.1", env) == "lo" and env == {"GLOO_SOCKET_IFNAME": "lo"}
    env = {"GLOO_SOCKET_IFNAME": "ib0"}
    assert bind_gloo_towards_master("127.0.0.1", env) == "ib0" and env == {"GLOO_SOCKET_IFNAME": "ib0"}
    assert interface_towards("no-such-host.invalid") is None


CHILD = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
assert os.environ["WORLD_SIZE"] == "{n}" and os.environ["MASTER_ADDR"] == "127.0.0.1"
mode = "{mode}"
if mode == "exit":
    sys.exit({{0: 0, 1: 7}}.get(rank, 0))
if mode == "signal":
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGUSR1}})  # the spawner's contract: handler first
    open(os.path.join(r"{tmp}", f"ready{{rank}}"), "w").close()
    deadline = time.time() + 30
    while not got and time.time() < deadline:
        time.sleep(0.05)
    sys.exit(124 if got else 3)
if mode == "hang":
    if rank == 0:
        sys.exit(5)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a rank stuck in a collective
    time.sleep(60)
"""


def spawn(tmp_path, mode, n=2):
    return spawn_local_ranks(
        [sys.executable, "-c", CHILD.format(n=n, mode=mode, tmp=tmp_path)], n, success_codes=[124]
    )


def test_statuses_combine(tmp_path):
    assert spawn(tmp_path, "exit", n=1) == 0
    assert spawn(tmp_path, "exit", n=2) == 7


def test_signal_to_the_parent_reaches_every_rank(tmp_path):
    import threading

    def signal_when_ready():
        deadline = time.time() + 30
        while not all((tmp_path / f"ready{r}").exists() for r in range(2)) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_when_ready, daemon=True).start()
    assert spawn(tmp_path, "signal") == 124


@pytest.mark.slow  # starts ranks and waits out the grace period
def test_a_failed_rank_stops_the_others(tmp_path):
    start = time.monotonic()
    assert spawn(tmp_path, "hang") == 5
    assert time.monotonic() - start < 30  # SIGKILL after the grace period, not the 60 s sleep


def test_a_batch_that_does_not_fit_the_ranks_fails_before_any_rank_starts():
    code = (
        "import sys; from cinescene.launch.cli import main; "
        "rc = main(['train', 'configs/experiments/smoke.yaml', 'train.global_batch_size=6']); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.global_batch_size=6 is not a multiple of" in lines[0]
    assert "data-parallel size 2" in lines[0]


@pytest.mark.parametrize(
    "overrides, key_text, code",
    [
        (
            ["data.train_shards=/nonexistent/shards", "data.generate=false"],
            "no training data at /nonexistent/shards",
            1,
        ),
        (["data.train_shards=null"], "config error: data.train_shards: required for training", 2),
    ],
)
def test_missing_data_fails_before_ranks_start(tmp_path, overrides, key_text, code):
    """One line from the launcher, no rank started (so no peer tracebacks), nothing written."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cinescene",
            "train",
            "configs/experiments/smoke.yaml",
            f"run.dir={tmp_path / 'run'}",
            *overrides,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and key_text in lines[0], out.stderr
    assert not (tmp_path / "run").exists()
