"""The record of each start of a SLURM job: its environment, nodes, config, code and package versions.

What SLURM tells the job (its id, restarts, nodes) is read by
:mod:`cinescene.distributed.slurm_env`; nothing here imports torch, so the
batch side of a job starts in well under a second.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cinescene.distributed.slurm_env import job_label, restart_count
from cinescene.provenance import CODE_ROOT, git_state

# Packages whose versions each start records (the ones a result depends on).
RECORDED_PACKAGES = (
    "cinescene",
    "torch",
    "deepspeed",
    "triton",
    "flash-attn",
    "numpy",
    "omegaconf",
    "webdataset",
    "wandb",
    "safetensors",
)


def package_versions(names: Sequence[str] = RECORDED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def start_record(
    *,
    argv: Sequence[str],
    config: Mapping[str, Any],
    nodes: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Everything about one start of a job that a later reader needs to trust its results."""
    env = os.environ if environ is None else environ
    slurm = {k: v for k, v in sorted(env.items()) if k.startswith("SLURM_") and "TOKEN" not in k}
    return {
        "job": job_label(env),
        "job_id": env.get("SLURM_JOB_ID"),
        "restart": restart_count(env),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "nodes": list(nodes),
        "cwd": os.getcwd(),
        "argv": list(argv),
        "git": git_state(CODE_ROOT),
        "packages": package_versions(),
        "slurm": slurm,
        "config": dict(config),
    }
