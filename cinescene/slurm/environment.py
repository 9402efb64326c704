"""What a SLURM job knows about itself: its id, its restarts, its nodes, and a record of each start.

Everything here reads the environment SLURM gives a job (``SLURM_JOB_ID``,
``SLURM_RESTART_COUNT``, ``SLURM_JOB_NODELIST`` ...) or asks ``scontrol``; none
of it imports torch, so the batch side of a job starts in well under a second.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import platform
import socket
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cinescene.errors import CineSceneError
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
SCONTROL_TIMEOUT_S = 60


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def in_batch_job(environ: Mapping[str, str] | None = None) -> bool:
    """True in the batch script of a SLURM job (not inside one of its ``srun`` steps)."""
    env = _environ(environ)
    return "SLURM_JOB_ID" in env and "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How many times SLURM has restarted this job (requeues of any kind); 0 outside SLURM."""
    value = _environ(environ).get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def job_label(environ: Mapping[str, str] | None = None) -> str:
    """The job as SLURM's ``%j`` (or ``%A_%a`` for an array task) names it in file names."""
    env = _environ(environ)
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def scontrol(*args: str) -> str:
    """``scontrol ARGS`` -> stdout; a failure is a one-line error naming the command."""
    cmd = ["scontrol", *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise CineSceneError("`scontrol` is not on PATH: this needs a SLURM client") from None
    except subprocess.TimeoutExpired:
        raise CineSceneError(f"`{' '.join(cmd)}` did not answer in {SCONTROL_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise CineSceneError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def expand_nodes(nodelist: str) -> list[str]:
    """``gpu[003-004]`` -> ``['gpu003', 'gpu004']``."""
    return scontrol("show", "hostnames", nodelist).split()


def node_address(node: str) -> str:
    """The address SLURM reaches ``node`` at (its NodeAddr): what every rank can connect to."""
    for token in scontrol("show", "node", "-o", node).split():
        key, _, value = token.partition("=")
        if key == "NodeAddr" and value:
            return value
    return node


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
    env = _environ(environ)
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


# ------------------------------------------------------------------ task side
_SIOCGIFADDR = 0x8915


def _interface_address(sock: socket.socket, name: str) -> str | None:
    try:
        packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def interface_towards(address: str) -> str | None:
    """The network interface this host reaches ``address`` through (Linux, IPv4); None if unknown."""
    try:
        target = socket.gethostbyname(address)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((target, 9))  # UDP: picks the route, sends nothing
            local = sock.getsockname()[0]
            for _, name in socket.if_nameindex():
                if _interface_address(sock, name) == local:
                    return name
    except OSError:
        return None
    return None


def bind_gloo_towards_master(master_addr: str, environ: dict[str, str] | None = None) -> str | None:
    """Make gloo use the interface that routes to the master, unless the user chose one.

    Left alone, gloo binds to whatever the host name resolves to, which on many
    machines is a loopback address the other nodes cannot reach.
    """
    env = os.environ if environ is None else environ
    if env.get("GLOO_SOCKET_IFNAME"):
        return env["GLOO_SOCKET_IFNAME"]
    name = interface_towards(master_addr)
    if name:
        env["GLOO_SOCKET_IFNAME"] = name
    return name
