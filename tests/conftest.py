"""Test-wide setup: markers that skip cleanly, CPU-only determinism, shared fixtures."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.fixtures.slurm", "tests.fixtures.checkpoint"]

# Tests never talk to W&B servers and never touch a GPU unless marked `gpu`.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
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
