"""Process group start-up and the data-/sequence-parallel layout of the ranks.

Layout: ranks ``g*S .. g*S+S-1`` form sequence-parallel group ``g`` (S =
``parallel.sequence``); they hold the same sample and split its tokens.
The data-parallel rank is ``g``, the data-parallel size ``world / S``.
ZeRO shards parameters and optimizer state over all ranks and reduces
gradients over all of them, dividing by the data-parallel size only
(DeepSpeed's ``parallel_state_sp`` mpu, the one its Ulysses integration
uses): each rank of a group contributes the gradient of its token shard,
and their sum is the gradient of the whole sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .env import DistEnv

_log = get_logger("distributed")


@dataclass(frozen=True)
class ParallelLayout:
    rank: int
    world_size: int
    local_rank: int
    sp_size: int
    sp_rank: int
    dp_size: int
    dp_rank: int
    sp_group: Any = None  # torch ProcessGroup of this rank's sequence-parallel group (None when S = 1)
    mpu: Any = None  # what deepspeed.initialize(mpu=...) needs for S > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_backend(name: str) -> str:
    if name == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if name == "nccl" and not torch.cuda.is_available():
        raise CineSceneError("parallel.backend=nccl needs CUDA, and no GPU is visible; use gloo or auto")
    return name


def init_process_group(env: DistEnv, backend: str, timeout_s: int) -> None:
    """Join the job's process group through DeepSpeed's comm layer (it wraps torch.distributed)."""
    import deepspeed

    os.environ.update(env.as_environ())
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    deepspeed.init_distributed(
        dist_backend=resolve_backend(backend),
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=timeout_s),
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
    )
    if env.rank == 0:
        _log.info(
            "joined %d ranks started by %s (backend %s, rendezvous %s:%d)",
            env.world_size,
            env.launcher,
            resolve_backend(backend),
            env.master_addr,
            env.master_port,
        )


def build_layout(env: DistEnv, sequence: int) -> ParallelLayout:
    """Sequence-parallel groups of ``sequence`` consecutive ranks; one-line error if they do not fit."""
    world = env.world_size
    if world % sequence:
        raise CineSceneError(
            f"parallel.sequence={sequence} does not divide the world size {world}: "
            f"run a multiple of {sequence} ranks"
        )
    sp_group = mpu = None
    if sequence > 1:
        from deepspeed.runtime.sequence_parallel import parallel_state_sp

        parallel_state_sp.initialize_sequence_parallel(sequence)
        sp_group = parallel_state_sp.get_sequence_parallel_group()
        mpu = parallel_state_sp
    return ParallelLayout(
        rank=env.rank,
        world_size=world,
        local_rank=env.local_rank,
        sp_size=sequence,
        sp_rank=env.rank % sequence,
        dp_size=world // sequence,
        dp_rank=env.rank // sequence,
        sp_group=sp_group,
        mpu=mpu,
    )


def destroy_process_group() -> None:
    """Leave the job; through DeepSpeed's comm layer, which also forgets the groups it cached
    (the world clone, the sequence-parallel groups), so a later trainer in the same process
    starts clean."""
    if dist.is_available() and dist.is_initialized():
        import deepspeed.comm as ds_comm

        if ds_comm.is_initialized():
            rank = dist.get_rank()
            ds_comm.destroy_process_group()
            remove_shared_memory_buffer(rank)
        else:
            dist.destroy_process_group()


def deepspeed_shared_memory_buffer(rank: int, environ=os.environ) -> str:
    """DeepSpeed's CPU all-reduce buffer of ``rank`` in this job (the name its shm.cpp gives it)."""
    address, port = environ.get("MASTER_ADDR", ""), environ.get("MASTER_PORT", "")
    return f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}"


def remove_shared_memory_buffer(rank: int) -> None:
    """Remove this rank's buffer of DeepSpeed's CPU shared-memory all-reduce, if it made one.

    DeepSpeed makes it when every rank is on one machine and its launcher said so (``LOCAL_SIZE``),
    and never removes it: 69 MB of memory per rank that outlived every such run. The job is over
    here, and its peers mapped the buffer while the group started (a mapping outlives the name).
    """
    try:
        os.unlink(deepspeed_shared_memory_buffer(rank))
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.debug("could not remove DeepSpeed's shared-memory buffer: %s", exc)
