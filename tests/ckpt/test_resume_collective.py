"""Choosing the checkpoint to resume is one decision for all ranks: rank 0 resolves a checkpoint.resume path
once and the others take its answer (a source run still training moves its `latest` between two ranks'
readings), and a file only one rank hashes, found damaged, makes every rank fall back together."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cinescene.config.checkpoint import CheckpointConfig
from cinescene.train.checkpoint import CheckpointManager
from cinescene.train.checkpoint.manager import verification_share

from ..conftest import REPO
from .fakes import FakeZeroEngine, rank_state, record

pytestmark = pytest.mark.dist


def saved(root: Path, *steps: int) -> None:
    manager = CheckpointManager(root, CheckpointConfig(), rank=0, world_size=1)
    for step in steps:
        manager.save(FakeZeroEngine(step=step), record(step), rank_state(step), "run: {}\n")


def choose_on_two_ranks(
    tmp_path: Path, root: Path, resume: str, workdirs: tuple[Path, Path]
) -> tuple[list[str], list[str]]:
    """What each rank chose, and what each printed on stderr (rank 0's warnings)."""
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.ckpt.choose_driver",
                str(r),
                str(workdirs[r]),
                str(store),
                str(root),
                resume,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _out, err in outs]
    return [out.strip().splitlines()[-1] for out, _err in outs], [err for _out, err in outs]


def test_every_rank_takes_the_step_rank_0_resolved(tmp_path):
    """A relative checkpoint.resume read in two working directories names two runs: the ranks must still
    load the one rank 0 resolved (as they must when a source run's `latest` moves between their readings)."""
    saved(tmp_path / "a" / "src" / "checkpoints", 1, 2)
    saved(tmp_path / "b" / "src" / "checkpoints", 1)
    chosen, _ = choose_on_two_ranks(
        tmp_path, tmp_path / "fork" / "checkpoints", "src/checkpoints", (tmp_path / "a", tmp_path / "b")
    )
    assert chosen == [f"chosen {tmp_path / 'a' / 'src' / 'checkpoints' / 'step_00000002'}"] * 2


def test_a_file_one_rank_hashes_found_altered_makes_every_rank_fall_back(tmp_path):
    root = tmp_path / "checkpoints"
    saved(root, 1, 2)
    step = root / "step_00000002"
    names = sorted(
        str(p.relative_to(step)) for p in step.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    share = verification_share(names, [(step / n).stat().st_size for n in names], 2)
    assert "config.yaml" in [names[i] for i in share[1]]  # hashed by rank 1 alone
    (step / "config.yaml").write_text("run: []\n")  # the same size
    chosen, errors = choose_on_two_ranks(tmp_path, root, "auto", (tmp_path, tmp_path))
    assert chosen == [f"chosen {root / 'step_00000001'}"] * 2
    warned = [line for line in errors[0].splitlines() if " W " in line]
    assert len(warned) == 1 and f"{step / 'config.yaml'}: altered (xxh3_128 differs" in warned[0]
    assert not [line for line in errors[1].splitlines() if " W " in line]  # rank 0 speaks for all
