"""Where this process sits in a job: rank, world size and rendezvous, from whoever started it.

Three ways a rank comes to life, checked in this order:

- ``torchrun`` / ``deepspeed`` (and our own local spawner): ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` are set.
- ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` inside a job
  step (``SLURM_STEP_ID`` set; a batch script alone also carries
  ``SLURM_PROCID=0`` but is not a step, and must not pretend to be rank 0 of
  N). The master is the first host of ``SLURM_JOB_NODELIST`` (expanded by
  ``scontrol show hostnames``), the port derives from the job id so every
  task computes the same one without talking.
- standalone: nothing set; ``cinescene train`` spawns ``launch.nproc`` local
  ranks itself on a free port.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from cinescene.errors import CineSceneError, env_int

from .slurm_env import expand_nodes

# Ports derived from a SLURM job id land in [BASE, BASE + SPAN): above the common
# service range and below the Linux ephemeral range (32768+), so they rarely collide.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 10000


@dataclass(frozen=True)
class DistEnv:
    """One rank's view of the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" | "deepspeed" | "srun" | "standalone"

    def as_environ(self) -> dict[str, str]:
        """The torchrun-style variables that ``init_process_group(init_method="env://")`` reads."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def under_torchrun(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "RANK" in env and "WORLD_SIZE" in env


def under_srun(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return (
        "SLURM_PROCID" in env and "SLURM_NTASKS" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)
    )


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[003-010,012]`` (via ``scontrol``)."""
    try:
        hosts = expand_nodes(nodelist)
    except CineSceneError as exc:
        raise CineSceneError(
            f"running under srun: {exc}; set MASTER_ADDR to the first node's hostname"
        ) from None
    if not hosts:
        raise CineSceneError(f"`scontrol show hostnames {nodelist}` printed no host; set MASTER_ADDR")
    return hosts[0]


def slurm_master_port(job_id: int) -> int:
    return SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; tiny race until the master binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Set by our own local spawner on the ranks it starts, so logs can tell them from torchrun's.
SPAWNER_MARK = "CINESCENE_LOCAL_SPAWN"

# What makes :func:`detect` take a process for a rank of a torchrun-style launch, or picks its rendezvous.
# A SLURM job inherits the submitting shell's environment (sbatch --export=ALL), so the batch process
# drops these before it sruns the ranks and sets the rendezvous from the allocation itself.
RANK_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "LOCAL_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    SPAWNER_MARK,
)


def _rank_launcher(env: dict[str, str]) -> str:
    """Who set the torchrun-style variables: our spawner, DeepSpeed's launcher (it sets LOCAL_SIZE,
    not LOCAL_WORLD_SIZE) or torchrun."""
    if env.get(SPAWNER_MARK) == "1":
        return "standalone"
    return "deepspeed" if "LOCAL_SIZE" in env and "LOCAL_WORLD_SIZE" not in env else "torchrun"


def detect(env: dict[str, str] | None = None) -> DistEnv | None:
    """The DistEnv set up by torchrun/deepspeed/our spawner or srun; None when standalone."""
    env = dict(os.environ if env is None else env)
    if under_torchrun(env):
        world = env_int("WORLD_SIZE", env)
        return DistEnv(
            rank=env_int("RANK", env),
            world_size=world,
            local_rank=env_int("LOCAL_RANK", env) if "LOCAL_RANK" in env else 0,
            local_world_size=(
                env_int("LOCAL_WORLD_SIZE", env)
                if "LOCAL_WORLD_SIZE" in env
                else env_int("LOCAL_SIZE", env)
                if "LOCAL_SIZE" in env
                else world
            ),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=env_int("MASTER_PORT", env) if "MASTER_PORT" in env else 29500,
            launcher=_rank_launcher(env),
        )
    if under_srun(env):
        world = env_int("SLURM_NTASKS", env)
        addr = env.get("MASTER_ADDR") or first_slurm_host(
            env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
        )
        port = (
            env_int("MASTER_PORT", env)
            if "MASTER_PORT" in env
            else slurm_master_port(env_int("SLURM_JOB_ID", env))
        )
        # "2(x3),1": tasks on this step's nodes; the first count is this node's in the usual layout.
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_NTASKS_PER_NODE", ""))
        first = per_node.split(",")[0].split("(")[0]
        local_world = int(first) if first.isdigit() else world
        return DistEnv(
            rank=env_int("SLURM_PROCID", env),
            world_size=world,
            local_rank=env_int("SLURM_LOCALID", env) if "SLURM_LOCALID" in env else 0,
            local_world_size=local_world,
            master_addr=addr,
            master_port=port,
            launcher="srun",
        )
    return None


LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")


def strip_local_rank_arg(argv: Sequence[str]) -> list[str]:
    """``argv`` without the ``--local_rank=N`` that DeepSpeed's launcher (and the legacy
    ``torch.distributed.launch``) insert before the script's own arguments; the same value
    is in ``LOCAL_RANK``, which :func:`detect` reads."""
    out: list[str] = []
    skip_value = False
    for item in argv:
        if skip_value:
            skip_value = False
            continue
        name, eq, _ = item.partition("=")
        if name in LOCAL_RANK_FLAGS:
            skip_value = not eq
            continue
        out.append(item)
    return out


def standalone(nproc: int, rank: int = 0, port: int | None = None) -> DistEnv:
    """The environment of local rank ``rank`` of ``nproc`` spawned on this machine."""
    return DistEnv(
        rank=rank,
        world_size=nproc,
        local_rank=rank,
        local_world_size=nproc,
        master_addr="127.0.0.1",
        master_port=port if port is not None else free_port(),
        launcher="standalone",
    )
