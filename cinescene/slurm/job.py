"""One start of a SLURM batch job: srun the ranks, then requeue the job if it has more to do.

This is the batch side of `cinescene submit`, `cinescene sweep` and
``slurm/train.sbatch`` (``cinescene slurm-job``). Each start:

1. moves its output to ``<run.dir>/slurm/<job>.out`` (appended across starts);
2. fails with one line when SLURM has restarted the job more than
   ``launch.max_restarts`` times;
3. records the start in ``<run.dir>/slurm/<job>.start-<restart>.json``: the
   resolved config, git commit and dirty flag, package versions, nodes;
4. runs ``srun --kill-on-bad-exit=1 python -m cinescene train CONFIG ...``:
   one rank per task, rendezvous at the first node's address on a port derived
   from the job id, gloo bound to the interface that reaches it;
5. decides, from how the ranks ended, whether the job comes back.

The requeue mechanism, exactly one: **this batch process runs ``scontrol requeue``
after the ranks have exited** -- never a rank, never a second party:

- The ranks saved after a preemption signal (status ``launch.preempt_exit_code``,
  e.g. SLURM's ``--signal`` warning before the time limit, or ``scancel
  --signal=USR1``): requeue.
- A rank died without saving (killed, segfault, out of memory: a status other
  than 0, 1 and 2): requeue; the job restarts from the previous checkpoint.
- 0 (done), 1 (an error a user must fix), 2 (bad config): no requeue.
- This process got SIGTERM: SLURM itself is ending the job (preemption,
  ``scancel``, the time limit) and signals the ranks too, which save within
  ``KillWait``. A preempted job is requeued by SLURM (``PreemptMode=REQUEUE``);
  a cancelled or timed-out one must stay ended. Either way this process does
  not requeue, so a job is never requeued twice and a cancel is never undone.

Warning signals sent to the batch process alone (``scancel --batch
--signal=USR1``) are forwarded to srun, which forwards them to every rank.
The batch process waits for every process srun leaves behind before it
decides (see ``_reap_orphans``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from cinescene.ckpt.locate import checkpoints_dir, latest_step_dir
from cinescene.config.schema import CineSceneConfig
from cinescene.distributed.env import RANK_VARIABLES, slurm_master_port
from cinescene.distributed.slurm_env import (
    expand_nodes,
    in_batch_job,
    job_label,
    node_address,
    restart_count,
    scontrol,
)
from cinescene.errors import CineSceneError
from cinescene.log import get_logger, setup_logging
from cinescene.run_dir import RunDir
from cinescene.secrets import scrub, secret_values

from .environment import start_record
from .records import write_record

_log = get_logger("slurm")

# Statuses after which the ranks must not simply be started again.
DONE, USER_ERROR, CONFIG_ERROR = 0, 1, 2
PR_SET_CHILD_SUBREAPER = 36
# How long to wait for srun's leftover helpers before deciding about a requeue.
ORPHAN_WAIT_S = 60


def _redirect_output(path: Path) -> None:
    """Send this process's stdout/stderr (and so srun's and the ranks') to ``path``, appending."""
    try:
        if os.path.samefile("/proc/self/fd/1", path):
            return  # sbatch --output already points there (cinescene submit)
    except OSError:
        pass
    print(f"cinescene slurm-job: the job's log is {path}", flush=True)
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def step_environment(environ, nodes: Sequence[str]) -> dict:
    """The ranks' environment: the job's, with the rendezvous taken from the allocation (first node, port
    from the job id) and never from variables the job inherited from the shell that submitted it (sbatch
    exports it: a MASTER_PORT or RANK there would be every job's)."""
    env = {key: value for key, value in environ.items() if key not in RANK_VARIABLES}
    env.update(
        PYTHONUNBUFFERED="1",
        MASTER_ADDR=node_address(nodes[0]),
        MASTER_PORT=str(slurm_master_port(int(environ["SLURM_JOB_ID"]))),
    )
    env.setdefault("OMP_NUM_THREADS", environ.get("SLURM_CPUS_PER_TASK", "1"))
    return env


def srun_command(config_path: str, overrides: Sequence[str], environ=None) -> list[str]:
    """The job step: one `cinescene train` rank per task of the allocation, argument by argument."""
    env = os.environ if environ is None else environ
    cmd = ["srun", "--kill-on-bad-exit=1"]
    if env.get("SLURM_CPUS_PER_TASK"):  # since SLURM 22.05 srun no longer inherits it from sbatch
        cmd.append(f"--cpus-per-task={env['SLURM_CPUS_PER_TASK']}")
    return [*cmd, sys.executable, "-m", "cinescene", "train", str(config_path), *overrides]


class JobSignals:
    """This start's signals to the batch process. SIGTERM is noted, not forwarded: SLURM is ending
    the job and signals srun and the ranks itself (a second SIGTERM would make srun kill the step
    at once). Warnings go on to srun, which hands them to every rank; one that comes before srun
    runs means the ranks are not worth starting: the step is skipped as if they had saved."""

    def __init__(self, warnings: Sequence[str]):
        self.warnings = [getattr(signal, name) for name in warnings if name != "SIGTERM"]
        self.ending: str | None = None
        self.warned = False
        self.step: subprocess.Popen | None = None
        self._previous = {}

    def __enter__(self) -> JobSignals:
        for signum in [signal.SIGTERM, *self.warnings]:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGTERM:
            self.ending = "SIGTERM"
        elif self.step is not None and self.step.poll() is None:
            self.step.send_signal(signum)
        else:
            self.warned = True

    def run_step(self, cmd: Sequence[str], env: dict, skipped_status: int) -> int:
        """Run the step to its end and return its status (``skipped_status`` if it is not worth starting)."""
        if self.ending or self.warned:
            _log.warning(
                "%s before the ranks started: not starting them", self.ending or "a preemption warning"
            )
            return 128 + signal.SIGTERM if self.ending else skipped_status
        _adopt_orphans()
        try:
            self.step = subprocess.Popen(list(cmd), env=env)
        except FileNotFoundError:
            raise CineSceneError("`srun` is not on PATH: cinescene slurm-job needs a SLURM client") from None
        status = self.step.wait()
        _reap_orphans(ORPHAN_WAIT_S)
        return 128 - status if status < 0 else status


def _adopt_orphans() -> None:
    """Become the parent of every process srun leaves behind (Linux: PR_SET_CHILD_SUBREAPER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_orphans(timeout: float) -> None:
    """Wait for what srun left behind. Its helper ("shepherd") may still be asking the controller to
    kill step <job>.0; were the job requeued first, that request would hit the next start's step 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)
    _log.warning("processes started by srun still run after %.0f s; going on", timeout)


def write_start_record(path: Path, cmd: list[str], nodes: list[str], cfg) -> None:
    """``<job>.start-<N>.json``, masked whole (the command line holds the overrides, the environment what
    the job inherited) and durable before the ranks start."""
    config = OmegaConf.to_container(OmegaConf.structured(cfg))
    record = scrub(start_record(argv=cmd, nodes=nodes, config=config), secret_values(config=config))
    write_record(path, record)


def _saved_on_preemption(root: Path, before: Path | None) -> bool:
    """Whether the newest checkpoint is new since ``before`` and was saved on a preemption signal."""
    from cinescene.ckpt.record import SaveReason, read_record

    latest = latest_step_dir(root)
    if latest is None or latest == before:
        return False
    try:
        return read_record(latest).reason == SaveReason.PREEMPTION.value
    except CineSceneError:
        return False


def decide(status: int, ending: str | None, cfg: CineSceneConfig, label: str) -> tuple[bool, str]:
    """Whether this process requeues the job after the step ended with ``status``, and why (one line)."""
    if status == DONE:
        return False, "the ranks finished"
    if ending:
        return False, (
            f"SLURM is ending job {label} ({ending}: preemption, scancel or the time limit) and the "
            f"ranks exited with status {status}; a preempted job is requeued by SLURM itself"
        )
    if status in (USER_ERROR, CONFIG_ERROR):
        return False, (
            f"the ranks failed with status {status}, an error to fix (see "
            f"{RunDir(cfg.run.dir).logs}): not requeueing"
        )
    why = (
        "the ranks saved after a preemption signal"
        if status == cfg.launch.preempt_exit_code
        else f"the ranks ended with status {status} without saving"
    )
    if not cfg.launch.slurm.requeue:
        return False, f"{why}; launch.slurm.requeue=false: not requeueing (resubmit to resume)"
    return True, f"{why}: requeueing job {label}; it resumes from the latest checkpoint"


@dataclass(frozen=True)
class StartOutcome:
    """How one start of the job ended, as the batch process decided it."""

    status: int  # the ranks' exit status (a preemption save that srun cut short counts as the save)
    requeued: bool  # this process requeued the job: it starts again from the latest checkpoint
    ending: str | None  # SLURM is ending the job (SIGTERM): it requeues a preempted job, or not
    why: str  # the decision, in one line


def run_job(cfg: CineSceneConfig, config_path: str, overrides: Sequence[str]) -> int:
    """This start of the batch job; returns the batch script's exit status."""
    outcome = run_start(cfg, config_path, overrides)
    return 0 if outcome.requeued else outcome.status


def run_start(cfg: CineSceneConfig, config_path: str, overrides: Sequence[str]) -> StartOutcome:
    """This start of the batch job (`cinescene slurm-job`, or a submitit job's function): srun the ranks,
    requeue when there is more to do."""
    if not in_batch_job():
        raise CineSceneError(
            "cinescene slurm-job runs as the batch script of a SLURM job: submit with "
            "`cinescene submit` or `sbatch slurm/train.sbatch CONFIG ...`"
        )
    with JobSignals(cfg.launch.preempt_signals) as signals:
        return _start(cfg, config_path, overrides, signals)


def _start(
    cfg: CineSceneConfig, config_path: str, overrides: Sequence[str], signals: JobSignals
) -> StartOutcome:
    label = job_label()
    run_dir = RunDir(cfg.run.dir)
    log_path = run_dir.job_log(label)
    run_dir.slurm.mkdir(parents=True, exist_ok=True)
    _redirect_output(log_path)
    setup_logging(cfg.run.log_level)
    restart = restart_count()
    nodes = expand_nodes(os.environ["SLURM_JOB_NODELIST"])
    _log.info(
        "job %s, start %d (restart %d of at most %d, launch.max_restarts) on %s: %s tasks",
        label,
        restart + 1,
        restart,
        cfg.launch.max_restarts,
        ",".join(nodes),
        os.environ.get("SLURM_NTASKS", "?"),
    )
    if restart > cfg.launch.max_restarts:
        raise CineSceneError(
            f"job {label} was restarted {restart} {'time' if restart == 1 else 'times'} and "
            f"launch.max_restarts is {cfg.launch.max_restarts}: giving up; {cfg.run.dir} keeps "
            "its latest checkpoint, resubmit to continue from it"
        )
    cmd = srun_command(config_path, overrides)
    write_start_record(run_dir.start_record(label, restart), cmd, nodes, cfg)

    env = step_environment(os.environ, nodes)
    checkpoints = checkpoints_dir(cfg)
    before = latest_step_dir(checkpoints)
    status = step_status = signals.run_step(cmd, env, skipped_status=cfg.launch.preempt_exit_code)
    if status not in (DONE, USER_ERROR, CONFIG_ERROR, cfg.launch.preempt_exit_code) and _saved_on_preemption(
        checkpoints, before
    ):
        # The ranks saved together, then one left with 124 first and srun (--kill-on-bad-exit) stopped the
        # others on their way out: the step's status is theirs, the checkpoint says what happened.
        status = cfg.launch.preempt_exit_code
    requeue, why = decide(status, signals.ending, cfg, label)
    if status != step_status:
        why += f" (srun's status {step_status}: it stopped a rank that was leaving after the save)"
    if not requeue:
        (_log.info if status == DONE else _log.warning)("job %s: %s", label, why)
        return StartOutcome(status, requeued=False, ending=signals.ending, why=why)
    _log.warning("job %s: %s", label, why)
    scontrol("requeue", os.environ["SLURM_JOB_ID"])
    return StartOutcome(status, requeued=True, ending=None, why=why)


def final_record(cfg: CineSceneConfig, restarts: int) -> dict:
    """What a finished run leaves: its latest checkpoint and step, the last logged loss, the job's
    restarts."""
    from cinescene.ckpt.layout import step_of

    checkpoint = latest_step_dir(checkpoints_dir(cfg))
    metrics = RunDir(cfg.run.dir).metrics.last()
    return {
        "run_dir": str(cfg.run.dir),
        "step": step_of(checkpoint) if checkpoint is not None else metrics.get("step"),
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "loss": metrics.get("loss"),
        "restarts": restarts,
    }
