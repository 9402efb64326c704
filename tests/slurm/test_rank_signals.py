"""A rank under SLURM, where every process of a job step gets the preemption SIGTERM (no cluster needed).

The rank must live to save: its children (DataLoader workers, any subprocess) never see the
preemption signals, and the W&B service, which does die of SIGTERM, must not take the rank down.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cinescene.config.tracking import TrackingConfig
from cinescene.train.preemption import PreemptionFlag
from cinescene.train.tracking import Tracker


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_children_started_under_the_flag_do_not_die_of_the_preemption_signals():
    flag = PreemptionFlag(["SIGUSR1", "SIGTERM"]).install()
    child = subprocess.Popen(["sleep", "30"])
    try:
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            child.send_signal(signum)
        time.sleep(0.3)
        assert child.poll() is None  # blocked in the child: it goes on
        os.kill(os.getpid(), signal.SIGTERM)  # the rank itself only raises its flag
        assert _wait(lambda: flag.requested) and flag.signal_name == "SIGTERM"
    finally:
        child.kill()
        child.wait()
        flag.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not {signal.SIGTERM, signal.SIGUSR1} & signal.pthread_sigmask(signal.SIG_BLOCK, [])


def _service_pids() -> list:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_service_of_us(p)]


def _is_service_of_us(proc: Path) -> bool:
    try:
        stat = (proc / "stat").read_text()
        return (
            "wandb-core" in (proc / "cmdline").read_text()
            and int(stat.rpartition(")")[2].split()[1]) == os.getpid()
        )
    except (OSError, ValueError, IndexError):
        return False


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_the_run_goes_on_when_the_wandb_service_dies(tmp_path):
    records = _Records()  # on the logger itself: setup_logging may have stopped propagation
    logging.getLogger("cinescene.train.tracking").addHandler(records)
    cfg = TrackingConfig()
    cfg.wandb.mode = "offline"
    tracker = Tracker(cfg, tmp_path, is_main=True, run_name="t", config={}, run_id=None, resume_step=0)
    tracker.log(1, {"loss": 1.0})
    services = _service_pids()
    assert services, "no W&B service was started"
    for pid in services:
        os.kill(pid, signal.SIGTERM)  # what SLURM does to every process of a preempted step
    assert _wait(lambda: not _service_pids())
    tracker.log(2, {"loss": 0.5})  # no exception: W&B is dropped for this start
    tracker.log(3, {"loss": 0.25})
    tracker.close(124, preempted=True)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]
    logging.getLogger("cinescene.train.tracking").removeHandler(records)
    assert sum("no more W&B in this start" in m for m in records.messages) == 1
