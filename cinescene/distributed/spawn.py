"""Standalone launch: start N local ranks of a command, forward signals, return one exit status.

The children get torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) on a free port and stay in the parent's
process group, so a terminal's Ctrl-C or a ``kill -- -PGID`` reaches them
all. A signal sent to the parent alone (``kill -USR1 <pid>``) is forwarded to
every child: the trainer treats SIGUSR1/SIGTERM as a preemption request.

Exit status: 0 when every rank finished; the preemption status when every
rank left through a preemption save; otherwise the first failing rank's
status (128 + N for a rank killed by signal N), after the remaining ranks
are stopped (they would otherwise wait in a collective until the timeout).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

from cinescene.log import get_logger

from .env import SPAWNER_MARK, free_port, standalone

_log = get_logger("launch")

POLL_S = 0.2
# After one rank fails, the others get SIGTERM and this long to leave before SIGKILL.
STOP_GRACE_S = 5.0


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def cpu_threads_per_rank(nproc: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def spawn_local_ranks(argv: Sequence[str], nproc: int, *, forward: Sequence[str] = ("SIGUSR1", "SIGTERM"),
                      success_codes: Sequence[int] = (), extra_env: Optional[Dict[str, str]] = None) -> int:
    """Run ``argv`` as ranks 0..nproc-1 of one job on this machine and wait for all of them.

    ``success_codes``: statuses besides 0 that end a rank on purpose (the
    preemption status); they do not stop the other ranks.
    """
    port = free_port()
    children: List[subprocess.Popen] = []
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(extra_env or {})
        env.update(standalone(nproc, rank, port).as_environ(), **{SPAWNER_MARK: "1"})
        # torchrun's habit: without it every rank starts one thread per core and they thrash.
        env.setdefault("OMP_NUM_THREADS", str(cpu_threads_per_rank(nproc)))
        children.append(subprocess.Popen(list(argv), env=env))
    _log.info("started %d local ranks (pids %s), master port %d", nproc, [c.pid for c in children], port)

    def relay(signum, _frame):
        for child in children:
            if child.poll() is None:
                try:
                    child.send_signal(signum)
                except ProcessLookupError:
                    pass

    names = list(forward) + ["SIGINT"]
    previous = {name: signal.signal(getattr(signal, name), relay) for name in names}
    try:
        return _wait(children, set(success_codes))
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _wait(children: List[subprocess.Popen], success_codes: set) -> int:
    failure: Optional[int] = None
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            break
        failed = [(rank, code) for rank, code in enumerate(codes)
                  if code is not None and code != 0 and code not in success_codes]
        if failed and failure is None:
            rank, code = failed[0]
            failure = _status(code)
            _log.error("rank %d exited with status %d; stopping the other ranks", rank, failure)
            _stop(children)
        time.sleep(POLL_S)
    if failure is not None:
        return failure
    statuses = [_status(child.returncode) for child in children]
    bad = [s for s in statuses if s != 0 and s not in success_codes]
    if bad:
        return bad[0]
    return next((s for s in statuses if s != 0), 0)


def _stop(children: List[subprocess.Popen]) -> None:
    live = [c for c in children if c.poll() is None]
    for child in live:
        child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(c.poll() is None for c in live):
        time.sleep(POLL_S)
    for child in live:
        if child.poll() is None:
            child.kill()
