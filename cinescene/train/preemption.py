"""Preemption: a signal sets a flag; the ranks agree on it at a step boundary; save; exit.

The handler does nothing but set the flag (no I/O, no collectives: those are
unsafe inside a signal handler and would race the training step). At every
step boundary the ranks all-reduce the flag (MAX), so one rank that got the
signal is enough and every rank decides at the same step. The trainer then
saves a checkpoint and every rank exits with ``launch.preempt_exit_code``
(default 124), the status a SLURM launcher requeues on. A preemption that
arrives after the last step needs no requeue: that run ends with status 0.

Signals come from ``launch.preempt_signals`` (SIGUSR1 and SIGTERM by default:
SLURM's ``--signal=USR1@180`` warning and the SIGTERM that precedes a
preemption's SIGKILL).

SLURM signals every process of a job step, not just the ranks: the W&B
service, DataLoader workers and any other child would die from the same
SIGTERM and take their rank down before it can save. So the flag's signals are
also blocked in the installing thread (children inherit the block: they never
see them) and a small thread takes them with ``sigwait``; a thread that still
has them unblocked runs the handler instead. Either way only the flag is set.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from cinescene.ckpt.record import SaveReason
from cinescene.log import get_logger

from .callbacks import Callback, StepResult, TrainState

_log = get_logger("train.preemption")


class PreemptionFlag:
    def __init__(self, signal_names: list[str]):
        self.signal_names = list(signal_names)
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._waiter: threading.Thread | None = None
        self._stopping = False

    def install(self) -> PreemptionFlag:
        signums = {getattr(signal, name) for name in self.signal_names}
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        if signums:
            signal.pthread_sigmask(
                signal.SIG_BLOCK, signums
            )  # inherited by threads and children from here on
            self._stopping = False
            self._waiter = threading.Thread(
                target=self._wait, args=(signums,), name="preemption-signals", daemon=True
            )
            self._waiter.start()
        return self

    def uninstall(self) -> None:
        signums = set(self._previous)
        if self._waiter is not None:
            self._stopping = True
            signal.pthread_kill(self._waiter.ident, next(iter(signums)))
            self._waiter.join()
            self._waiter = None
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _wait(self, signums) -> None:
        while True:
            signum = signal.sigwait(signums)
            if self._stopping:
                return
            self._handle(signum, None)

    def _handle(self, signum, _frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self, device: torch.device, group=None) -> bool:
        """True on every rank when any rank has been signalled (a collective: call it on all ranks)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())


class PreemptionCallback(Callback):
    """At each step boundary: if any rank was signalled, save and stop with the preemption status."""

    name = "preemption"

    def __init__(self, flag: PreemptionFlag, exit_code: int, device: torch.device):
        self.flag = flag
        self.exit_code = exit_code
        self.device = device

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        if not self.flag.agreed(self.device):
            return
        finished = result.step >= state.max_steps
        _log.warning(
            "preemption requested (%s): saving at step %d and exiting with status %d",
            self.flag.signal_name or "signal on another rank",
            result.step,
            0 if finished else self.exit_code,
        )
        state.request_save(SaveReason.PREEMPTION.value)
        state.stop = True
        state.exit_code = 0 if finished else self.exit_code


class RestartsMetric(Callback):
    """``restarts`` in every metrics row: how many times SLURM has restarted this job (0 outside SLURM).

    A requeued job -- after a preemption save, a time-limit warning or a rank killed without
    saving -- starts again with ``SLURM_RESTART_COUNT`` one higher; the W&B run gets the same key.
    """

    name = "restarts"

    def __init__(self, restarts: int):
        self.restarts = restarts

    def on_train_start(self, state: TrainState) -> None:
        if self.restarts:
            _log.info("this job has been restarted %d time(s) by SLURM", self.restarts)

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        state.metrics["restarts"] = self.restarts
