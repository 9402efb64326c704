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
"""
from __future__ import annotations

import signal
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from cinescene.log import get_logger

from .callbacks import Callback, StepResult, TrainState

_log = get_logger("train.preemption")


class PreemptionFlag:
    def __init__(self, signal_names: List[str]):
        self.signal_names = list(signal_names)
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, object] = {}

    def install(self) -> "PreemptionFlag":
        for name in self.signal_names:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

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
        _log.warning("preemption requested (%s): saving at step %d and exiting with status %d",
                     self.flag.signal_name or "signal on another rank", result.step,
                     0 if finished else self.exit_code)
        state.request_save("preemption")
        state.stop = True
        state.exit_code = 0 if finished else self.exit_code
