"""How a job is started: local ranks, and SLURM resources for `cinescene submit`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from .base import non_negative, positive, require


@dataclass
class SlurmConfig:
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 16
    mem: Optional[str] = None
    time: str = "24:00:00"
    # Sent before the time limit so the job can checkpoint and requeue ("SIG@seconds").
    signal: str = "USR1@180"
    requeue: bool = True
    # Extra `#SBATCH` lines, verbatim (e.g. "--constraint=h100").
    extra: List[str] = field(default_factory=list)

    def validate(self) -> None:
        positive(self.nodes, "nodes")
        non_negative(self.gpus_per_node, "gpus_per_node")
        positive(self.cpus_per_task, "cpus_per_task")
        sig, _, secs = self.signal.partition("@")
        require(bool(sig) and secs.isdigit(), "signal", "'SIGNAL@seconds' such as 'USR1@180'", self.signal)


@dataclass
class LaunchConfig:
    # Local ranks spawned by `cinescene train` when not under torchrun/srun.
    nproc: int = 1
    # Signals that request a checkpoint-and-exit at the next step boundary.
    preempt_signals: List[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"])
    # Exit status after a preemption save (the SLURM launcher requeues on it).
    preempt_exit_code: int = 124
    master_port: int = 29500
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self) -> None:
        positive(self.nproc, "nproc")
        for i, name in enumerate(self.preempt_signals):
            require(name.startswith("SIG") and name.isupper(), f"preempt_signals[{i}]",
                    "a signal name such as 'SIGUSR1'", name)
        require(0 < self.preempt_exit_code < 256, "preempt_exit_code", "an exit status 1..255",
                self.preempt_exit_code)
        require(1024 <= self.master_port < 65536, "master_port", "a port 1024..65535", self.master_port)
