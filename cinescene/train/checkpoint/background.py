"""What a save needs besides files: a writer thread, the ranks' agreement on how it went, one-line errors.

- :class:`WriterThread` runs a save's writing and committing off the training
  loop (``checkpoint.async``); :func:`run_inline` runs the same work in the
  calling thread (a synchronous save), so both report through a ``Future``.
  The thread is a daemon: a run that stops on an error does not wait for a
  write that will never be committed (its ``.tmp-step_*`` is removed at the
  next start).
- :func:`agree` is the ranks' one collective per step boundary while a save
  is in flight: how many ranks finished writing, failed, and whether rank 0
  committed. Only the main thread of each rank calls collectives, so the
  writer thread never races the training step's.
- :func:`shared_message` gives every rank the failing rank's one-line error,
  so each rank stops with the cause and the file it names (the failing rank's
  own log may sit on the full disk).
- :func:`check_host_memory`: ``checkpoint.async``'s host copy (cinescene
  plan's figure before the engine is built, then measured from the engine's
  own state), refused with one line when the node does not have it free.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import torch
import torch.distributed as dist

from cinescene.config.base import ConfigError
from cinescene.errors import CineSceneError
from cinescene.host_memory import human_bytes

T = TypeVar("T")
_MESSAGE_BYTES = 2048


class CheckpointWriteError(CineSceneError):
    """A save could not be written or committed (full disk, permissions); the previous checkpoint stands."""

    @classmethod
    def of(cls, path, exc: OSError) -> CheckpointWriteError:
        return cls(f"cannot write {path}: {exc.strerror or exc}")


def io_step(path, action: Callable[[], T]) -> T:
    """``action()``, its operating-system error turned into a CheckpointWriteError naming ``path``."""
    try:
        return action()
    except OSError as exc:
        raise CheckpointWriteError.of(getattr(exc, "filename", None) or path, exc) from None


# --------------------------------------------------------------------------- running work
def run_inline(work: Callable[[], T]) -> Future:
    """``work()`` run now, in this thread; its result or error in a done Future, as from the thread
    (KeyboardInterrupt and other BaseExceptions still propagate here)."""
    future: Future = Future()
    future.set_running_or_notify_cancel()
    try:
        future.set_result(work())
    except Exception as exc:
        future.set_exception(exc)
    return future


class WriterThread:
    """One daemon thread running submitted work in order (a save's write, then rank 0's commit)."""

    def __init__(self, name: str = "checkpoint-writer"):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, work: Callable[[], T]) -> Future:
        if self._thread is None:
            # Started from the training loop, so it inherits the rank's blocked preemption signals.
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        future: Future = Future()
        self._jobs.put((future, work))
        return future

    def _loop(self) -> None:
        while True:
            future, work = self._jobs.get()
            if future is None:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work())
                except BaseException as exc:
                    future.set_exception(exc)

    def close(self) -> None:
        """Stop the thread after the work already submitted (waits for it)."""
        if self._thread is not None:
            self._jobs.put((None, None))
            self._thread.join()
            self._thread = None


# ------------------------------------------------------------------------------ collectives
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(*flags: bool) -> list[int]:
    """Collective: each flag summed over the ranks (the flags themselves without a process group)."""
    values = [int(bool(f)) for f in flags]
    if not _distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(v) for v in tensor.tolist()]


def shared_message(message: str | None) -> str:
    """Collective: the message of the lowest rank that has one (every rank gets the same text)."""
    if not _distributed():
        return message or ""
    rank, world, device = dist.get_rank(), dist.get_world_size(), _device()
    sender = torch.tensor([rank if message is not None else world], dtype=torch.int64, device=device)
    dist.all_reduce(sender, op=dist.ReduceOp.MIN)
    source = int(sender.item())
    if source >= world:
        return ""
    buffer = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8)
    if rank == source:
        data = message.encode("utf-8", "backslashreplace")[:_MESSAGE_BYTES]
        buffer[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    buffer = buffer.to(device)
    dist.broadcast(buffer, src=source)
    return bytes(buffer.cpu().tolist()).rstrip(b"\0").decode("utf-8", "replace")


# ------------------------------------------------------------------------------ host memory
def check_host_memory(
    need_bytes: int,
    local_ranks: int,
    available_bytes: int | None,
    *,
    key: str = "checkpoint.async",
    source: str = "",
) -> str:
    """Collective: refuse (the same ConfigError on every rank) when a node cannot hold its ranks' host copies.

    Returns the start-up line describing the cost. ``available_bytes`` is the node's free host memory
    (None when unknown: nothing is refused). ``source`` says where ``need_bytes`` comes from when it is not
    measured (" (cinescene plan's figure)").
    """
    node_need = need_bytes * local_ranks
    short = available_bytes is not None and node_need > available_bytes
    free = "unknown" if available_bytes is None else f"{human_bytes(available_bytes)} available"
    refusal = None
    if short:
        refusal = (
            f"the host copy of a save needs {human_bytes(need_bytes)} per rank{source}, "
            f"{human_bytes(node_need)} for the {local_ranks} rank(s) on a node, but only "
            f"{human_bytes(available_bytes)} of host memory is available on {socket.gethostname()}; set "
            f"{key}=false (saves then block the loop) or free host memory"
        )
    if agree(short)[0]:
        raise ConfigError(key, shared_message(refusal))
    return (
        f"{key}: the host copy of a save takes {human_bytes(need_bytes)} per rank "
        f"({human_bytes(node_need)} for the {local_ranks} rank(s) on this node; {free})"
    )


__all__ = [
    "CheckpointWriteError",
    "WriterThread",
    "agree",
    "check_host_memory",
    "io_step",
    "run_inline",
    "shared_message",
]
