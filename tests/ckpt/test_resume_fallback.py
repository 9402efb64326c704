"""A damaged newest checkpoint: one warning line naming the file, resume from the previous complete one, the
run finishes (altered bytes of the same size included: every file is hashed against the manifest). A
checkpoint carrying code: refused naming the file, the code never runs (auto-resume falls back;
``checkpoint.resume=<path>`` stops with the one-line error). A fork (``checkpoint.resume=<path>``) seeds an
empty run only: restarted with the same command line, it continues from its own checkpoints.

Real one-rank ZeRO-3 runs of the trainer's stand-in model, in-process (tests/train/standins.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cinescene.ckpt.errors import UnsafeCheckpointError
from cinescene.ckpt.layout import is_complete
from cinescene.distributed.env import standalone
from cinescene.train.entry import run_rank
from tests.train.standins import standin_components, tiny_config

from .fakes import relist
from .test_safe_files import Planted

pytestmark = pytest.mark.slow

ARGS = (
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=5",
    "tracking.wandb.mode=disabled",
    "train.ema.enabled=true",
)
MODEL_STATES = "zero/zero_pp_rank_0_mp_rank_00_model_states.pt"
OPTIM_STATES = "zero/zero_pp_rank_0_mp_rank_00_optim_states.pt"
RANK_STATE = "rank_states/rank_00000.safetensors"


def train(run_dir: Path, steps: int, *extra: str) -> int:
    return run_rank(
        tiny_config(run_dir, f"train.max_steps={steps}", *ARGS, *extra), standalone(1), standin_components()
    )


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """Checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("fallback") / "base"
    assert train(run_dir, 4) == 0
    return run_dir


def copy_run(base_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir, symlinks=True)
    return run_dir


def checkpoint_warnings(run_dir: Path, since: int):
    text = (run_dir / "logs" / "rank0.log").read_text()[since:]
    return [line for line in text.splitlines() if " W [r0] cinescene.train.checkpoint:" in line], text


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def plant(step_dir: Path, name: str, marker: Path) -> None:
    """Replace a checkpoint file by a pickle that creates ``marker``, and fix the manifest to match (as an
    attacker would): only reading the file as data can refuse it."""
    import torch

    torch.save({"optimizer_state_dict": {"payload": Planted(marker)}}, step_dir / name)
    relist(step_dir, name)


def overwrite_tensor_data(path: Path, value: float = 1e30) -> None:
    """8 bytes of the largest tensor record of a torch.save file set to ``value`` (twice, fp32): the file
    keeps its size and structure, only its content (and so its digest) changes."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_len + extra_len + 16)
        handle.write(struct.pack("<2f", value, value))


def damage(run_dir: Path, case: str, tmp_path: Path) -> tuple:
    """Damage the run as ``case`` says; returns (the file the warning must name, the step to resume from)."""
    ck = run_dir / "checkpoints"
    step4 = ck / "step_00000004"
    if case in ("optim_states", "model_states", "rank_state"):
        name = {"optim_states": OPTIM_STATES, "model_states": MODEL_STATES, "rank_state": RANK_STATE}[case]
        truncate(step4 / name)
        return step4 / name, 2
    if case == "optim_states_altered":  # same size: once accepted, the weights loading as 1e30
        overwrite_tensor_data(step4 / OPTIM_STATES)
        return step4 / OPTIM_STATES, 2
    if case == "zero_deleted":
        shutil.rmtree(step4 / "zero")
        return step4 / MODEL_STATES, 2
    if case == "trainer_state":
        (step4 / "trainer_state.json").write_text('{"step": 4, "consumed')
        return step4 / "trainer_state.json", 2
    if case.startswith("planted_"):
        name = {
            "planted_rank_state": RANK_STATE,
            "planted_model_states": MODEL_STATES,
            "planted_optim_states": OPTIM_STATES,
        }[case]
        plant(step4, name, tmp_path / "PWNED")
        return step4 / name, 2
    pointer = ck / "latest"
    pointer.unlink()
    if case == "latest_not_utf8":
        pointer.write_bytes(b"step_0000\xff\xfe04\n")
    elif case == "latest_directory":
        pointer.mkdir()
    elif case == "latest_absolute":
        pointer.write_text(f"{step4.resolve()}\n")
    elif case == "latest_dotdot":
        pointer.write_text("../checkpoints/step_00000004\n")
    elif case == "step_symlink_escaping":
        outside = tmp_path / "elsewhere" / "step_00000004"
        outside.parent.mkdir()
        step4.rename(outside)
        step4.symlink_to(outside)
        pointer.write_text("step_00000004\n")
        return pointer, 2
    return pointer, 4  # a bad pointer: the newest complete checkpoint is still step 4


CASES = [
    "optim_states",
    "optim_states_altered",
    "model_states",
    "rank_state",
    "zero_deleted",
    "trainer_state",
    "latest_not_utf8",
    "latest_directory",
    "latest_absolute",
    "latest_dotdot",
    "step_symlink_escaping",
    "planted_rank_state",
    "planted_model_states",
    "planted_optim_states",
]


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_newest_checkpoint_falls_back_with_one_warning_naming_the_file(base_run, tmp_path, case):
    run_dir = copy_run(base_run, tmp_path)
    named, resumed = damage(run_dir, case, tmp_path)
    since = len((run_dir / "logs" / "rank0.log").read_text())
    assert train(run_dir, 5) == 0
    warnings, text = checkpoint_warnings(run_dir, since)
    assert len(warnings) == 1, warnings
    assert str(named) in warnings[0], (named, warnings[0])
    ck = run_dir / "checkpoints"
    assert f"resumed from {ck}/step_{resumed:08d}" in text
    assert is_complete(ck / "step_00000005") and (ck / "latest").read_text() == "step_00000005\n"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert not (tmp_path / "PWNED").exists()
    if case == "step_symlink_escaping":
        assert (tmp_path / "elsewhere" / "step_00000004" / "trainer_state.json").is_file()  # never touched


@pytest.mark.parametrize("name", [RANK_STATE, MODEL_STATES, OPTIM_STATES])
def test_resume_from_a_path_refuses_a_planted_pickle_in_one_line(base_run, tmp_path, name):
    source = copy_run(base_run, tmp_path) / "checkpoints" / "step_00000004"
    marker = tmp_path / "PWNED"
    plant(source, name, marker)
    with pytest.raises(Exception) as info:
        train(tmp_path / "fork", 6, f"checkpoint.resume={source}")
    message = str(info.value)
    assert str(source / name) in message and "\n" not in message
    assert isinstance(info.value, UnsafeCheckpointError) or name == RANK_STATE
    assert not marker.exists()
    assert not (tmp_path / "fork" / "checkpoints").exists() or not os.listdir(
        tmp_path / "fork" / "checkpoints"
    )


def test_a_restarted_fork_continues_its_own_checkpoints_never_the_fork_point(base_run, tmp_path):
    """A SLURM requeue repeats the command line, checkpoint.resume=<another run's step> included: the second
    start must resume from the fork's own step 3 (saying why), not retrain from the source's step 2."""
    source = copy_run(base_run, tmp_path) / "checkpoints" / "step_00000002"
    fork = tmp_path / "fork"
    assert train(fork, 3, f"checkpoint.resume={source}") == 0
    log = fork / "logs" / "rank0.log"
    assert f"resumed from {source}" in log.read_text()
    since = len(log.read_text())
    assert train(fork, 5, f"checkpoint.resume={source}") == 0  # the same command line, a later start
    text = log.read_text()[since:]
    assert f"resumed from {fork}/checkpoints/step_00000003" in text
    assert "seeds an empty run only" in text and f"resumed from {source}" not in text
    rows = [json.loads(line) for line in (fork / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4, 5]
    assert sorted(p.name for p in (fork / "checkpoints").glob("step_*")) == [
        "step_00000003",
        "step_00000004",
        "step_00000005",
    ]
