"""`cinescene train`'s ranks under every launcher a user has: torchrun, DeepSpeed's launcher, srun.

The unit tests read the environments; the `dist` and `slurm` tests start real jobs (the stand-in model
of :mod:`tests.train.standins`, 2 ranks over gloo, 4 steps) and check that the ranks found each other
the launcher's way and trained to the end.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from cinescene.distributed.env import detect, free_port, strip_local_rank_arg
from cinescene.distributed.groups import deepspeed_shared_memory_buffer

from .conftest import REPO, finish, start

TRAIN_ARGS = ["tracking.wandb.mode=disabled", "train.max_steps=4", "checkpoint.every_steps=2"]


def test_deepspeed_launcher_environment():
    env = detect(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "LOCAL_SIZE": "2",
            "MASTER_ADDR": "node1",
            "MASTER_PORT": "29501",
        }
    )
    assert (env.rank, env.local_rank, env.local_world_size, env.launcher) == (3, 1, 2, "deepspeed")


def test_local_spawner_ranks_are_told_apart():
    env = detect({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "CINESCENE_LOCAL_SPAWN": "1"})
    assert env.launcher == "standalone"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--local_rank=1", "train", "c.yaml", "a=1"], ["train", "c.yaml", "a=1"]),
        (["train", "--local-rank", "0", "c.yaml"], ["train", "c.yaml"]),
        (["train", "c.yaml", "run.local_rank=2"], ["train", "c.yaml", "run.local_rank=2"]),
    ],
)
def test_the_launchers_local_rank_flag_is_dropped(argv, expected):
    assert strip_local_rank_arg(argv) == expected


def finished_run(run_dir: Path, launcher: str) -> None:
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert f"joined 2 ranks started by {launcher}" in log, log[-2000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert (run_dir / "logs" / "rank1.log").exists()


@pytest.mark.dist
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_ranks_started_by_a_launcher_train(tmp_path, launcher):
    tool = shutil.which(launcher, path=str(Path(sys.executable).parent)) or shutil.which(launcher)
    assert tool, f"{launcher} is not installed next to {sys.executable}"
    ranks = ["--nproc_per_node", "2"] if launcher == "torchrun" else ["--num_gpus", "2"]
    run_dir, log, port = tmp_path / "run", tmp_path / "run.log", free_port()
    proc = start(
        [
            tool,
            *ranks,
            "--master_port",
            str(port),
            "--module",
            "tests.train.standin_train",
            str(run_dir),
            *TRAIN_ARGS,
        ],
        log,
    )
    assert finish(proc, timeout=300) == 0, log.read_text()[-3000:]
    finished_run(run_dir, launcher)
    # DeepSpeed's launcher makes its CPU all-reduce use shared memory; the ranks remove what it leaves.
    for rank in (0, 1):
        address = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        assert not Path(deepspeed_shared_memory_buffer(rank, address)).exists()


@pytest.mark.slurm
def test_srun_tasks_are_the_ranks(slurm, tmp_path):
    run_dir = tmp_path / "run"
    step = f"srun {sys.executable} -m tests.train.standin_train {run_dir} {' '.join(TRAIN_ARGS)}"
    jobid = slurm.submit(
        ["--ntasks=2", "--cpus-per-task=1", f"--chdir={REPO}", "-o", str(tmp_path / "%j.out"), "--wrap", step]
    )
    state = slurm.wait(jobid, timeout=300)
    output = (tmp_path / f"{jobid}.out").read_text() if (tmp_path / f"{jobid}.out").exists() else ""
    assert state == "COMPLETED", output[-3000:]
    finished_run(run_dir, "srun")
