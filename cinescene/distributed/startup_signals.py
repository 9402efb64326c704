"""Preemption signals from the first moment of `cinescene train`, before the trainer's handler exists.

SLURM or a user may send SIGUSR1/SIGTERM while a process is still importing
torch, building the model or loading a checkpoint. With Python's default
action it would die with status 138/143, no message, and a requeue would not
follow. So `cinescene train` records these signals from right after argument
parsing (:func:`install`, before the config and anything slow is imported);
the launcher narrows the set to ``launch.preempt_signals`` once the config is
read (:func:`configure`); and a rank hands what arrived to its
:class:`~cinescene.train.preemption.PreemptionFlag` (:func:`hand_over`), whose
ranks then agree to stop before the first step, saving nothing new (exit
``launch.preempt_exit_code``). A standalone launcher that got a signal before
starting its ranks does not start them (:func:`requested`).

The moment left uncovered is the interpreter's own start, before any of our
code runs (tens of milliseconds, more on a loaded machine), for a process
that no spawner of ours started.

Ranks started by the local spawner begin life with these signals *blocked*
(:mod:`cinescene.distributed.spawn`), so a signal forwarded to a rank that is
still starting waits instead of killing it; every function here that installs
a handler unblocks the signal after the handler is in place.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

# LaunchConfig.preempt_signals' default: what is recorded before the config is read.
DEFAULT_SIGNALS = ("SIGUSR1", "SIGTERM")

_received: list[str] = []
_previous: dict[int, object] = {}  # signal number -> the handler ours replaced


def signal_numbers(names: Iterable[str]) -> list[signal.Signals]:
    """The catchable signals among ``names`` (launch.preempt_signals is validated with the config)."""
    out = []
    for name in names:
        number = getattr(signal, str(name), None)
        if isinstance(number, signal.Signals) and number not in (signal.SIGKILL, signal.SIGSTOP):
            out.append(number)
    return out


def _record(signum, _frame) -> None:
    _received.append(signal.Signals(signum).name)


def install(names: Iterable[str] = DEFAULT_SIGNALS) -> None:
    """Record ``names`` from now on (idempotent), then let them through if they were blocked."""
    numbers = signal_numbers(names)
    for number in numbers:
        if number not in _previous:
            _previous[number] = signal.signal(number, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, numbers)


def configure(names: Iterable[str]) -> None:
    """Narrow (or widen) the recorded set to the config's ``launch.preempt_signals``.

    A signal that arrived early but is not a preemption signal after all gets
    its default action now, as it would have without us.
    """
    wanted = set(signal_numbers(names))
    for number in [n for n in _previous if n not in wanted]:
        signal.signal(number, _previous.pop(number))
    install(names)
    for name in [n for n in _received if getattr(signal, n) not in wanted]:
        _received.remove(name)
        os.kill(os.getpid(), getattr(signal, name))


def requested() -> str | None:
    """The first preemption signal received so far, if any."""
    return _received[0] if _received else None


def received() -> list[str]:
    """Every preemption signal received so far, in order."""
    return list(_received)


def hand_over(flag) -> None:
    """After ``flag`` (a PreemptionFlag) installed its handlers: give it what arrived.

    The signal mask stays the flag's: it keeps its signals blocked in this thread (and so in every
    child started from here on) and takes them with ``sigwait``, including any still pending.
    """
    if _received:
        flag.requested = True
        flag.signal_name = flag.signal_name or _received[0]
