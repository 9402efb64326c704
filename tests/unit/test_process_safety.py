"""Process plumbing of `cinescene train`, without torch: ranks of our spawner are tied to the launcher's
life (and torchrun's ranks are not touched), and a preemption signal that arrives before the launcher
starts its ranks is honoured (exit 124, one line, nothing started)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cinescene.distributed.spawn import LAUNCHER_PID, spawn_local_ranks

CHILD = f"""
import ctypes, os, sys
from cinescene.distributed.spawn import die_with_launcher
die_with_launcher()
value = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)
open(os.path.join(sys.argv[1], "pdeathsig%s" % os.environ.get("RANK", "x")), "w").write(str(value.value))
assert "{LAUNCHER_PID}" not in os.environ  # popped: the rank's own children are not ranks
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_ranks_of_our_spawner_die_with_it_and_torchruns_are_left_alone(tmp_path):
    assert spawn_local_ranks([sys.executable, "-c", CHILD, str(tmp_path)], 2) == 0
    assert [(tmp_path / f"pdeathsig{r}").read_text() for r in (0, 1)] == [str(int(signal.SIGKILL))] * 2
    # A rank started by anything else (torchrun, srun: no launcher pid in its environment) keeps its default.
    env = {k: v for k, v in os.environ.items() if k != LAUNCHER_PID}
    subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], check=True, env=dict(env, RANK="7"), timeout=60
    )
    assert (tmp_path / "pdeathsig7").read_text() == "0"


LAUNCH_WITH_SIGNAL = """
import os, signal, sys
from cinescene.distributed import startup_signals
from cinescene.launch.cli import main

install = startup_signals.install
def install_then_signal(*args, **kwargs):  # the signal lands right after the handler, while the config loads
    install(*args, **kwargs)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
startup_signals.install = install_then_signal
rc = main(["train", "configs/experiments/smoke.yaml", *sys.argv[2:]])
assert "torch" not in sys.modules, "torch imported"
sys.exit(rc)
"""


def _launch_with_signal(repo_root, name, *overrides):
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("RANK", None)
    return subprocess.run(
        [sys.executable, "-c", LAUNCH_WITH_SIGNAL, name, *overrides],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("name", ["SIGUSR1", "SIGTERM"])
def test_a_preemption_signal_before_the_ranks_start_exits_124_starting_nothing(tmp_path, repo_root, name):
    out = _launch_with_signal(repo_root, name, f"run.dir={tmp_path / 'run'}")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 124 and len(lines) == 1, out.stderr
    assert f"preemption requested ({name}) before any rank started: nothing new saved" in lines[0]
    run_dir = tmp_path / "run"  # locked (the run and its checkpoint directory), nothing else written
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == [
        "checkpoints",
        "checkpoints/run.lock",
        "run.lock",
    ]


def test_an_early_signal_that_is_not_a_preemption_signal_keeps_its_default_action(tmp_path, repo_root):
    out = _launch_with_signal(
        repo_root, "SIGTERM", f"run.dir={tmp_path / 'run'}", "launch.preempt_signals=[SIGUSR1]"
    )
    assert out.returncode == -signal.SIGTERM, out.stderr


def test_local_ranks_are_bounded_by_the_cores(tmp_path, repo_root):
    cores = len(os.sched_getaffinity(0))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cinescene",
            "train",
            "configs/experiments/smoke.yaml",
            f"run.dir={tmp_path / 'run'}",
            "--nproc",
            str(cores + 1),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert f"--nproc: expected at most {cores} local ranks, got {cores + 1}" in out.stderr
    assert "every rank needs one" in out.stderr and not (tmp_path / "run").exists()


SPAWN_WITH_SIGNAL = """
import os, signal, subprocess, sys, threading, time
from cinescene.distributed.spawn import spawn_local_ranks

threading.Thread(target=time.sleep, args=(120,), daemon=True).start()  # like numpy's BLAS threads
popen = subprocess.Popen
def popen_then_signal(*args, **kwargs):  # the signal lands while the ranks are being started
    child = popen(*args, **kwargs)
    if os.environ.get("SIGNALLED") is None:
        os.environ["SIGNALLED"] = "1"
        os.kill(os.getpid(), signal.SIGUSR1)
    return child
subprocess.Popen = popen_then_signal
rank = (
    "import signal, sys, time\\n"
    "got = []\\n"
    "signal.signal(signal.SIGUSR1, lambda *a: got.append(1))\\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})\\n"
    "deadline = time.time() + 60\\n"
    "while not got and time.time() < deadline:\\n"
    "    time.sleep(0.05)\\n"
    "sys.exit(124 if got else 3)\\n")
sys.exit(spawn_local_ranks([sys.executable, "-c", rank], 3, success_codes=[124]))
"""


def test_a_signal_while_the_ranks_are_started_reaches_every_rank(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SPAWN_WITH_SIGNAL], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 124, out.stderr
