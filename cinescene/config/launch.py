"""How a job is started: local ranks, preemption, and the SLURM resources of `cinescene submit`."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field

from .base import ConfigError, non_negative, positive, require

# Signals a process cannot catch: naming one as a preemption signal could never work.
UNCATCHABLE_SIGNALS = ("SIGKILL", "SIGSTOP")
# SLURM's --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds; or UNLIMITED.
_SLURM_TIME = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE)$")
# SLURM's --mem: a number with an optional K/M/G/T unit.
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")
# An extra sbatch option: --name or --name=value, on one line.
_SBATCH_OPTION = re.compile(r"^--[A-Za-z][A-Za-z0-9-]*(=[^\n\r]*)?$")
# Partition, account and QOS names reach sbatch as option values: one word.
_SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")
# sbatch options `launch.slurm.extra` may not give: the ones `cinescene submit` sets itself (from the keys
# above and the flags, so a second value would contradict them), the ones that choose what runs, where its
# files go or what environment it gets (the job is always slurm/train.sbatch writing to <run.dir>/slurm/),
# and the ones that change what sbatch prints or whether it submits at all.
RESERVED_SBATCH_OPTIONS = (
    # set by cinescene submit / sweep
    "account",
    "array",
    "chdir",
    "cpus-per-task",
    "gpus-per-node",
    "job-name",
    "mem",
    "nodes",
    "ntasks-per-node",
    "open-mode",
    "output",
    "parsable",
    "partition",
    "qos",
    "requeue",
    "no-requeue",
    "signal",
    "time",
    # other ways to say the same resources
    "cpus-per-gpu",
    "gpus",
    "gpus-per-task",
    "mem-per-cpu",
    "mem-per-gpu",
    "ntasks",
    "ntasks-per-core",
    "ntasks-per-gpu",
    "ntasks-per-socket",
    "tres-per-task",
    # what runs, where it writes, what it inherits
    "wrap",
    "error",
    "input",
    "export",
    "export-file",
    "container",
    "container-id",
    "get-user-env",
    "uid",
    "gid",
    "propagate",
    "batch",
    # sbatch's own behaviour as our client
    "wait",
    "test-only",
    "help",
    "usage",
    "version",
    "quiet",
    "verbose",
    "parsable",
)


def reserved_option(line: str) -> str | None:
    """The reserved sbatch option an ``--option[=value]`` names, also as sbatch's unique-prefix abbreviation
    (``--out=`` is ``--output=``), or None.

    sbatch (getopt_long) takes an exact option name as that option before it tries prefixes, so an
    unreserved option whose whole name starts a reserved one would be refused here by mistake; no sbatch
    option does (tests/slurm/test_devcluster.py checks every option the cluster's sbatch lists).
    """
    name = line[2:].partition("=")[0].lower()
    if name in RESERVED_SBATCH_OPTIONS:  # exactly, as sbatch takes it (--gpus is not --gpus-per-node)
        return name
    if len(name) >= 2:
        for option in RESERVED_SBATCH_OPTIONS:
            if option.startswith(name):
                return option
    return None


def catchable_signal(name: str) -> bool:
    """True for the name of a real signal this process can handle (``SIGUSR1``), not ``SIGKILL``."""
    return name in signal.Signals.__members__ and name not in UNCATCHABLE_SIGNALS


@dataclass
class SlurmConfig:
    """Resources and behaviour of the job `cinescene submit` (and `cinescene sweep`) hand to sbatch."""

    # None: the cluster's default partition / the user's default account / no QOS.
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    # One task (rank) per GPU. 0: a CPU-only job with launch.nproc tasks per node.
    gpus_per_node: int = 8
    # CPUs per task: data loading and the host side of the step.
    cpus_per_task: int = 16
    # Memory per node ("256G"); None: the cluster's default.
    mem: str | None = None
    # Wall-time limit per start of the job; the job requeues itself before it (see `signal`).
    # Quote it in YAML: an unquoted 1:30 is read as the number 90.
    time: str = "24:00:00"
    # "SIG@seconds": SLURM sends SIG to every rank this long before the time limit, so they save
    # at the next step boundary and the job requeues itself. SIG must be a launch.preempt_signals.
    signal: str = "USR1@180"
    # Requeue after a preemption save, a time-limit warning or a rank killed without saving;
    # false: such a job ends (it still resumes from its checkpoint when resubmitted).
    requeue: bool = True
    # More sbatch options, one `--option[=value]` each (e.g. "--constraint=h100"); passed as
    # arguments, never through a shell.
    extra: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for key in ("partition", "account", "qos"):
            value = getattr(self, key)
            require(
                value is None or bool(_SLURM_NAME.match(value)),
                key,
                "a SLURM name (letters, digits, _.+-)",
                value,
            )
        positive(self.nodes, "nodes")
        non_negative(self.gpus_per_node, "gpus_per_node")
        positive(self.cpus_per_task, "cpus_per_task")
        require(
            self.mem is None or bool(_SLURM_MEM.match(self.mem)), "mem", "a size such as '256G'", self.mem
        )
        require(
            bool(_SLURM_TIME.match(self.time)),
            "time",
            "a SLURM time limit such as '24:00:00', '90' (minutes) or '1-12:00:00'",
            self.time,
        )
        sig, _, secs = self.signal.partition("@")
        require(
            bool(sig) and sig.isalnum() and secs.isdigit() and int(secs) > 0,
            "signal",
            "'SIGNAL@seconds' such as 'USR1@180'",
            self.signal,
        )
        for i, line in enumerate(self.extra):
            require(
                isinstance(line, str) and bool(_SBATCH_OPTION.match(line)),
                f"extra[{i}]",
                "one sbatch option '--option' or '--option=value' on one line",
                line,
            )
            reserved = reserved_option(line)
            if reserved is not None:
                raise ConfigError(
                    f"extra[{i}]",
                    f"{line!r} sets sbatch's --{reserved}, which cinescene decides (from launch.slurm's keys "
                    "and the submit flags, or because it chooses what runs and where its files go); use the "
                    "keys, not extra",
                )

    def signal_name(self) -> str:
        """The warning signal's full name: 'USR1@180' -> 'SIGUSR1'."""
        sig = self.signal.partition("@")[0].upper()
        return sig if sig.startswith("SIG") else f"SIG{sig}"


@dataclass
class LaunchConfig:
    # Local ranks spawned by `cinescene train` when not under torchrun/srun; the tasks per node
    # of a CPU-only SLURM job (launch.slurm.gpus_per_node=0).
    nproc: int = 1
    # Signals that request a checkpoint-and-exit at the next step boundary.
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"])
    # Exit status after a preemption save (the SLURM job requeues itself on it).
    preempt_exit_code: int = 124
    # Starts of a SLURM job after the first (preemption, time limit, a rank killed): past this
    # many the job fails instead of training again, so a crash loop cannot hold the cluster.
    max_restarts: int = 10
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self) -> None:
        positive(self.nproc, "nproc")
        for i, name in enumerate(self.preempt_signals):
            require(
                isinstance(name, str) and catchable_signal(name),
                f"preempt_signals[{i}]",
                "the name of a signal a process can catch, such as 'SIGUSR1' (not SIGKILL or SIGSTOP)",
                name,
            )
        require(
            0 < self.preempt_exit_code < 256,
            "preempt_exit_code",
            "an exit status 1..255",
            self.preempt_exit_code,
        )
        require(
            self.preempt_exit_code not in (1, 2),
            "preempt_exit_code",
            "a status other than 1 and 2 (those mean an error and a bad config)",
            self.preempt_exit_code,
        )
        non_negative(self.max_restarts, "max_restarts")
        if self.slurm.signal_name() not in self.preempt_signals:
            raise ConfigError(
                "slurm.signal",
                f"{self.slurm.signal!r} sends {self.slurm.signal_name()}, which is not "
                f"in launch.preempt_signals {self.preempt_signals}: it would kill "
                "the ranks instead of asking them to save",
            )
