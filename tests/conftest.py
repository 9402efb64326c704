"""Test-wide setup: markers that skip cleanly, CPU-only determinism, shared fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cinescene.distributed.env import RANK_VARIABLES  # imports neither torch nor triton

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = [
    "tests.fixtures.slurm",
    "tests.fixtures.checkpoint",
    "tests.fixtures.s3",
    "tests.fixtures.pretrained",
]

# Tests never talk to W&B servers and never touch a GPU unless marked `gpu`.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def _cuda_visible() -> bool:
    import torch  # importing torch does not import triton

    return torch.cuda.is_available()


# Triton decides interpreter or GPU JIT when a function is decorated, its own library included
# (triton.language's @jit helpers), so on a CPU the interpreter is switched on before anything in
# the session can import triton (a metric library, torch.compile in an earlier test). Model code
# never picks the fused kernels on a CPU by itself (attention backend "auto" needs CUDA), so
# nothing else notices.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's default-change warning
if not _cuda_visible():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: `-m "not slow"` must see the added marks
def pytest_collection_modifyitems(config, items):
    """A test that starts ranks (``dist``) or SLURM jobs (``slurm``) is ``slow`` too, so the fast tier
    (``pytest -m "not slow"``) never waits on one; ``gpu`` tests skip without a GPU."""
    skip_gpu = None if _cuda_visible() else pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}  # not item.keywords: folder names are in it
        if marks & {"dist", "slurm"} and "slow" not in marks:
            item.add_marker(pytest.mark.slow)
        if skip_gpu is not None and "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def cli_env(tmp_path) -> dict:
    """Environment for running `cinescene` as a subprocess from a test."""
    env = dict(os.environ)
    env["WANDB_MODE"] = "offline"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


@pytest.fixture
def cinescene_cmd() -> list:
    return [sys.executable, "-m", "cinescene"]


@pytest.fixture(scope="session")
def smoke_shards(tmp_path_factory):
    """The smoke job's synthetic shards, rendered once per test session."""
    from cinescene.config import load_config
    from cinescene.data.ensure import ensure_dataset

    shards = tmp_path_factory.mktemp("smoke_data") / "shards"
    cfg, _ = load_config(REPO / "configs/experiments/smoke.yaml", [f"data.train_shards={shards}"])
    ensure_dataset(cfg.data)
    return shards


@pytest.fixture(autouse=True)
def _no_launcher_variables():
    """Each test starts without launcher variables (``RANK_VARIABLES``) and leaves os.environ as it was
    before it. In-process DeepSpeed and torch.distributed runs leave launcher variables in os.environ, and
    in-process commands set their own (`train --dry-run` sets DS_ACCELERATOR); a `cinescene` subprocess
    started by a later test would inherit them: join a job that is gone, or print other library output."""
    before = dict(os.environ)
    for key in RANK_VARIABLES:
        os.environ.pop(key, None)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)


@pytest.fixture
def cinescene_logs(caplog):
    """caplog of the ``cinescene`` logger tree at INFO and above (the tree may not propagate to the root)."""
    import logging

    logger = logging.getLogger("cinescene")
    propagate, logger.propagate = logger.propagate, False  # each record reaches caplog once
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="cinescene"):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = propagate
