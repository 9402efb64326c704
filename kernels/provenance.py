"""Where and when a benchmark ran: UTC date, git commit, library versions, device.

Every benchmark's ``--out`` JSON carries this block, so a figure pasted into
BENCHMARKS.md can be traced to the code and the machine that produced it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

_SOURCE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=_SOURCE_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name for a CUDA device, else the host CPU's."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}"


def provenance(device: torch.device | None = None) -> dict[str, object]:
    """date (UTC, ISO 8601), commit and dirty flag of the source checkout (None outside a git checkout),
    python/torch/CUDA/triton/flash-attn versions (None when absent), device name."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        commit=commit,
        dirty=None if status is None else bool(status),
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=_version("triton"),
        flash_attn=_version("flash-attn", "flash_attn"),
        device=device_name(device),
    )
