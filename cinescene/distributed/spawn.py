"""Standalone launch: start N local ranks of a command, forward signals, return one exit status.

The children get torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) on a free port and stay in the parent's
process group, so a terminal's Ctrl-C or a ``kill -- -PGID`` reaches them
all. A signal sent to the parent alone (``kill -USR1 <pid>``) is forwarded to
every child: the trainer treats SIGUSR1/SIGTERM as a preemption request.

Two guarantees for every rank started here:

- *No rank outlives its launcher.* Each child calls :func:`die_with_launcher`
  early (``cinescene`` does it first thing): ``PR_SET_PDEATHSIG`` makes the
  kernel SIGKILL it when the launcher dies, even by SIGKILL (elsewhere than
  Linux, a thread watches the parent). Ranks of torchrun, deepspeed or srun
  are not ours and are left alone: the variable that asks for it is set only here.
- *A forwarded signal is never lost and never kills a starting rank.* The
  relay is installed before the first child starts, and a preemption signal
  that arrived while they were being started (or earlier, recorded by
  :mod:`cinescene.distributed.startup_signals`) is sent to every child once all
  exist. The children start with the forwarded signals blocked (the launcher
  blocks them while it starts them, and the mask is inherited), so a signal
  reaching a child before its handler exists waits instead of killing it. A rank
  unblocks them once its own handler is installed (``startup_signals`` does),
  so a program run through this spawner must do the same.

Exit status: 0 when every rank finished; the preemption status when every
rank left through a preemption save; otherwise the first failing rank's
status (128 + N for a rank killed by signal N), after the remaining ranks
are stopped (they would otherwise wait in a collective until the timeout).
"""

from __future__ import annotations

import ctypes
import glob
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from cinescene.config.base import ConfigError
from cinescene.log import get_logger

from . import startup_signals
from .env import SPAWNER_MARK, free_port, standalone
from .startup_signals import signal_numbers

_log = get_logger("launch")

POLL_S = 0.2
# After one rank fails, the others get SIGTERM and this long to leave before SIGKILL.
STOP_GRACE_S = 5.0


# Set in each child: the launcher's pid, which the child must not outlive.
LAUNCHER_PID = "CINESCENE_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0


def _kernel_kills_orphan() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_launcher() -> None:
    """In a rank this spawner started: end with the launcher.
    A no-op anywhere else (and when called again)."""
    pid = os.environ.pop(LAUNCHER_PID, None)  # popped: the rank's own children are not ranks
    if pid is None or not pid.isdigit():
        return
    launcher = int(pid)
    if not _kernel_kills_orphan():

        def watch() -> None:
            while os.getppid() == launcher:
                time.sleep(PARENT_POLL_S)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    if os.getppid() != launcher:  # the launcher died before we asked
        os.kill(os.getpid(), signal.SIGKILL)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def cpu_threads_per_rank(nproc: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def _visible_gpus() -> int:
    """GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else the device nodes."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [v for v in visible.split(",") if v.strip()]
        return 0 if not entries or entries[0].strip() == "-1" else len(entries)
    return len(glob.glob("/dev/nvidia[0-9]*"))


def check_local_ranks(nproc: int, backend: str, key: str) -> None:
    """Local ranks need a CPU core each, and a GPU each when they talk over NCCL."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if nproc > cores:
        raise ConfigError(
            key,
            f"expected at most {cores} local ranks, got {nproc}: this machine lets the run use "
            f"{cores} CPU cores and every rank needs one (use torchrun or srun across machines)",
        )
    gpus = _visible_gpus()
    if gpus and backend != "gloo" and nproc > gpus:
        raise ConfigError(
            key,
            f"expected at most {gpus} local ranks, got {nproc}: {gpus} GPUs are visible and "
            "every NCCL rank needs its own",
        )


def spawn_local_ranks(
    argv: Sequence[str],
    nproc: int,
    *,
    forward: Sequence[str] = ("SIGUSR1", "SIGTERM"),
    success_codes: Sequence[int] = (),
    extra_env: dict[str, str] | None = None,
    keep_fds: Sequence[int] = (),
) -> int:
    """Run ``argv`` as ranks 0..nproc-1 of one job on this machine and wait for all of them.

    ``success_codes``: statuses besides 0 that end a rank on purpose (the
    preemption status); they do not stop the other ranks. ``keep_fds``: open
    descriptors the ranks inherit (the run directory's lock).
    """
    forwarded = signal_numbers(forward)
    port = free_port()
    children: list[subprocess.Popen] = []
    relayed: list[int] = []

    def relay(signum, _frame):
        relayed.append(signum)
        _send(children, signum)

    previous = {number: signal.signal(number, relay) for number in forwarded + [signal.SIGINT]}
    try:
        # Blocked in this thread while the children start: they inherit the mask, so a signal reaching one
        # of them before its handler exists waits instead of killing it.
        signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
        try:
            for rank in range(nproc):
                env = dict(os.environ)
                env.update(extra_env or {})
                env.update(
                    standalone(nproc, rank, port).as_environ(),
                    **{SPAWNER_MARK: "1", LAUNCHER_PID: str(os.getpid())},
                )
                # torchrun's habit: without it every rank starts one thread per core and they thrash.
                env.setdefault("OMP_NUM_THREADS", str(cpu_threads_per_rank(nproc)))
                children.append(subprocess.Popen(list(argv), env=env, pass_fds=tuple(keep_fds)))
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
        _log.info("started %d local ranks (pids %s), master port %d", nproc, [c.pid for c in children], port)
        # A preemption signal that came while the ranks were being started (the caller's early handler, or
        # the relay before every child existed) goes to all of them now; a repeat is harmless.
        for signum in dict.fromkeys(signal_numbers(startup_signals.received()) + relayed):
            if signum in forwarded:
                _send(children, signum)
        return _wait(children, set(success_codes))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _send(children: list[subprocess.Popen], signum: int) -> None:
    for child in children:
        if child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass


def _wait(children: list[subprocess.Popen], success_codes: set) -> int:
    failure: int | None = None
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            break
        failed = [
            (rank, code)
            for rank, code in enumerate(codes)
            if code is not None and code != 0 and code not in success_codes
        ]
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


def _stop(children: list[subprocess.Popen]) -> None:
    live = [c for c in children if c.poll() is None]
    for child in live:
        child.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(c.poll() is None for c in live):
        time.sleep(POLL_S)
    for child in live:
        if child.poll() is None:
            child.kill()
