"""Real `cinescene train` runs (2 local gloo ranks, the smoke model) treated as a hostile user would: a
second run on the same directory, a preemption signal while the ranks start, `kill -9` of the launcher
alone, secrets in the W&B arguments. And what the console shows meanwhile: our lines only."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from cinescene.train.run_lock import RunDirLock

from .conftest import REPO, finish, run_env, start
from .test_train_integration import metrics, smoke_cmd

pytestmark = [pytest.mark.dist, pytest.mark.slow]

KEY = "sk-live-0123456789abcdef"
OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [DIWE] \[r\d+\] cinescene[.\w]*: ")


def ranks_of(proc: subprocess.Popen, count: int = 2, timeout: float = 120) -> list:
    """The launcher's rank processes, once all ``count`` exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the launcher ended early"
        children = psutil.Process(proc.pid).children()
        if len(children) == count:
            return children
        time.sleep(0.05)
    raise AssertionError(f"no {count} ranks within {timeout} s")


@pytest.fixture(scope="module")
def first_run(smoke_shards, tmp_path_factory):
    """Two steps with a W&B key in the environment and in the notes and tags; a second run on the same
    directory is tried while the first one trains."""
    root = tmp_path_factory.mktemp("hostile")
    run_dir, log = root / "run", root / "run.log"
    cmd = smoke_cmd(
        run_dir,
        smoke_shards,
        "train.max_steps=2",
        "checkpoint.every_steps=2",
        "tracking.wandb.notes=key ${oc.env:WANDB_API_KEY}",
        'tracking.wandb.tags=[a,"${oc.env:WANDB_API_KEY}"]',
    )
    proc = start(cmd, log, WANDB_API_KEY=KEY)
    ranks_of(proc)
    second = subprocess.run(
        cmd, cwd=REPO, env=run_env(WANDB_API_KEY=KEY), capture_output=True, text=True, timeout=120
    )
    assert finish(proc) == 0, log.read_text()[-3000:]
    return run_dir, log, second, proc.pid


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(first_run):
    _, _, second, launcher = first_run
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert f"is in use by another run: pid {launcher} on " in lines[0]


def test_the_console_shows_only_our_lines_and_library_output_is_in_the_rank_logs(first_run):
    run_dir, log, _, _ = first_run
    console = log.read_text().splitlines()
    assert console and all(OUR_LINE.match(line) for line in console), "\n".join(
        line for line in console if not OUR_LINE.match(line)
    )
    rank_logs = "".join((run_dir / "logs" / f"rank{r}.log").read_text() for r in (0, 1))
    assert "Setting accelerator to CPU" in rank_logs and "built successfully" in rank_logs


def test_secrets_never_reach_a_file_and_the_saved_config_trains_again(first_run, tmp_path):
    run_dir, _, _, _ = first_run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files and not [p for p in files if KEY.encode() in p.read_bytes()]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["tracking"]["wandb"]["notes"] == "key ***" and saved["tracking"]["wandb"]["tags"] == [
        "a",
        "***",
    ]
    assert (
        saved["model"]["scene"]["vggt"]["num_register_tokens"] == 4 and saved["model"]["scene"]["vggt_tokens"]
    )
    # The saved config is the run's config: it loads, passes the checkpoint's model check and trains on.
    again = Path(shutil.copytree(run_dir, tmp_path / "again"))
    log = tmp_path / "again.log"
    proc = start(
        [
            sys.executable,
            "-m",
            "cinescene",
            "train",
            str(again / "config.yaml"),
            f"run.dir={again}",
            "train.max_steps=3",
        ],
        log,
    )
    assert finish(proc) == 0, log.read_text()[-3000:]
    assert f"resumed from {again}/checkpoints/step_00000002" in log.read_text()
    assert [row["step"] for row in metrics(again)] == [1, 2, 3]


def test_a_signal_while_the_ranks_start_saves_nothing_new_and_exits_124(first_run, tmp_path):
    run_dir, _, _, _ = first_run
    again = Path(shutil.copytree(run_dir, tmp_path / "again"))
    log = tmp_path / "again.log"
    proc = start(
        [
            sys.executable,
            "-m",
            "cinescene",
            "train",
            str(again / "config.yaml"),
            f"run.dir={again}",
            "train.max_steps=6",
            "--verbose",
        ],
        log,
    )
    ranks_of(proc)
    os.kill(proc.pid, signal.SIGUSR1)  # the ranks are still importing: relayed, it waits for their handlers
    assert finish(proc) == 124, log.read_text()[-3000:]
    text = log.read_text()
    said = [line for line in text.splitlines() if "preemption requested" in line]
    assert (
        len(said) == 1
        and (
            "preemption requested (SIGUSR1) before step 3: nothing new saved, "
            f"{again}/checkpoints/step_00000002 stands"
        )
        in said[0]
    ), text[-3000:]
    assert (again / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == sorted(
        p.name for p in (run_dir / "checkpoints").iterdir()
    )
    assert [row["step"] for row in metrics(again)] == [1, 2]
    assert "Setting accelerator to CPU" in text  # --verbose: library output stays on the console


def test_kill_9_of_the_launcher_alone_stops_its_ranks_and_frees_the_directory(smoke_shards, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = start(smoke_cmd(run_dir, smoke_shards), log)
    ranks = ranks_of(proc)
    deadline = time.monotonic() + 300
    rank0_log = run_dir / "logs" / "rank0.log"
    # Both ranks well under way. (Not earlier: a rank killed while DeepSpeed loads its ops leaves torch's
    # build lock behind; `cinescene train` clears it, but other tests' DeepSpeed starts would wait on it.)
    while not (rank0_log.exists() and "joined 2 ranks" in rank0_log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, not its process group
    try:
        gone, alive = psutil.wait_procs(ranks, timeout=60)
        assert not alive, f"ranks {[p.pid for p in alive]} outlived their launcher"
        RunDirLock(run_dir).acquire().release()  # free again: a restart may take the directory
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
