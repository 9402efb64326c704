"""The local SLURM dev cluster does what the launchers rely on.

Real jobs on the cluster from slurm/devcluster/start.sh: submission,
arrays, the signal -> requeue -> restart cycle of preemptible training, and
partition preemption. Each test takes seconds; a requeued job waits out the
5 s launch-credential expiry before it starts again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def _lines(path: Path) -> list[str]:
    """Job output without slurmstepd's own notices (e.g. '*** JOB 7 ... REQUEUE ***')."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("slurmstepd")]


def _wait_output(slurm, path: Path, line: str, timeout: float = 30) -> None:
    try:
        slurm.wait_for(f"{line!r} in {path.name}", lambda: line in _lines(path), timeout)
    except Exception as e:
        raise AssertionError(f"{e}; output so far: {_lines(path)}") from None


def _wait_idle(slurm, timeout: float = 30) -> None:
    """Preemption needs the whole node: wait for other jobs to leave it."""

    def idle() -> bool:
        return not slurm.run(["squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING", "-o", "%i"]).stdout.strip()

    try:
        slurm.wait_for("an empty queue", idle, timeout)
    except Exception:
        queue = slurm.run(["squeue"]).stdout
        pytest.fail(f"the dev cluster is busy with other jobs, cannot test preemption:\n{queue}")


def test_sbatch_wrap_true_completes(slurm, tmp_path):
    t0 = time.monotonic()
    jobid = slurm.submit(["-o", str(tmp_path / "%j.out"), "--wrap", "true"])
    assert slurm.wait(jobid, timeout=30) == "COMPLETED"
    took = time.monotonic() - t0
    assert slurm.jobs(jobid)[0]["ExitCode"] == "0:0"
    assert (tmp_path / f"{jobid}.out").exists(), "the job never ran (no output file)"
    assert slurm.sacct_states(jobid, ["COMPLETED"]) == ["COMPLETED"]
    print(f"sbatch --wrap true: COMPLETED {took:.2f} s after submission")


def test_sbatch_failure_and_cancel_reach_sacct(slurm, tmp_path):
    failed = slurm.submit(["-o", str(tmp_path / "%j.out"), "--wrap", "exit 3"])
    cancelled = slurm.submit(["-o", str(tmp_path / "%j.out"), "--wrap", "sleep 300"])
    slurm.wait_state(cancelled, "RUNNING")
    slurm.cancel(cancelled)
    assert slurm.wait(failed) == "FAILED"
    assert slurm.wait(cancelled) == "CANCELLED"
    slurm.sacct_states(failed, ["FAILED"])
    slurm.sacct_states(cancelled, ["CANCELLED"])
    assert slurm.sacct(failed)[-1]["ExitCode"] == "3:0"


def test_array_runs_every_index(slurm, tmp_path):
    jobid = slurm.submit(
        [
            "--array=0-2",
            "-o",
            str(tmp_path / "arr-%A_%a.out"),
            "--wrap",
            "echo $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID",
        ]
    )
    assert slurm.wait(jobid, timeout=30) == "COMPLETED"
    for i in range(3):
        assert _lines(tmp_path / f"arr-{jobid}_{i}.out") == [f"{jobid} {i}"], f"array task {i}"
    assert not list(tmp_path.glob(f"arr-{jobid}_3.out"))

    def three_done() -> bool:
        rows = slurm.sacct(jobid)
        return sorted((r["JobID"], r["State"]) for r in rows) == [
            (f"{jobid}_{i}", "COMPLETED") for i in range(3)
        ]

    slurm.wait_for(f"sacct to show array {jobid} tasks 0-2 COMPLETED", three_done)


REQUEUE_SCRIPT = """#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
RC=${SLURM_RESTART_COUNT:-0}
# what a preemptible trainer does: on the warning signal, requeue itself and leave
trap 'echo "USR1 RC=$RC"; scontrol requeue $SLURM_JOB_ID; exit 0' USR1
echo "start RC=$RC"
if [ "$RC" -ge 1 ]; then echo "done RC=$RC"; exit 0; fi
sleep 300 & wait $!
echo "USR1 never came"; exit 1
"""


def test_usr1_trap_requeue_restarts_with_restart_count(slurm, tmp_path):
    script = tmp_path / "requeue.sh"
    script.write_text(REQUEUE_SCRIPT)
    out = tmp_path / "requeue.out"
    jobid = slurm.submit(["-o", str(out), str(script)])
    _wait_output(slurm, out, "start RC=0")  # the trap is set from here on
    t0 = time.monotonic()
    slurm.run(["scancel", "--signal=USR1", "--batch", jobid])
    assert slurm.wait(jobid, timeout=60) == "COMPLETED"
    took = time.monotonic() - t0
    assert _lines(out) == ["start RC=0", "USR1 RC=0", "start RC=1", "done RC=1"]
    assert slurm.jobs(jobid)[0]["Restarts"] == "1"
    slurm.sacct_states(jobid, ["REQUEUED", "COMPLETED"])
    print(f"USR1 -> requeue -> second run COMPLETED in {took:.1f} s")


LOW_SCRIPT = """#!/bin/bash
#SBATCH --partition=debug
#SBATCH --requeue
#SBATCH --open-mode=append
RC=${SLURM_RESTART_COUNT:-0}
trap 'echo "TERM RC=$RC"; exit 143' TERM
echo "start RC=$RC"
if [ "$RC" -ge 1 ]; then echo "done RC=$RC"; exit 0; fi
sleep 300 & wait $!
"""


def test_urgent_job_preempts_and_requeues_debug_job(slurm, tmp_path):
    _wait_idle(slurm)
    cpus, node = slurm.cpus, slurm.nodes[0]  # both jobs on the first node: one must make room for the other
    low_sh = tmp_path / "low.sh"
    low_sh.write_text(LOW_SCRIPT)
    low_out, hi_out = tmp_path / "low.out", tmp_path / "hi.out"
    low = slurm.submit(["-w", node, "-c", str(cpus), "-o", str(low_out), str(low_sh)])
    _wait_output(slurm, low_out, "start RC=0")

    t0 = time.monotonic()
    hi = slurm.submit(
        ["-p", "urgent", "-w", node, "-c", str(cpus), "-o", str(hi_out), "--wrap", "echo urgent ran"]
    )
    # Without preemption the urgent job would wait 300 s for the CPUs.
    assert slurm.wait(hi, timeout=30) == "COMPLETED"
    preempt_s = time.monotonic() - t0
    assert _lines(hi_out) == ["urgent ran"]
    assert slurm.wait(low, timeout=60) == "COMPLETED"
    # The preempted job saw SIGTERM (the trainer's cue to save) and ran again.
    assert _lines(low_out) == ["start RC=0", "TERM RC=0", "start RC=1", "done RC=1"]
    assert slurm.jobs(low)[0]["Restarts"] == "1"

    slurm.sacct_states(low, ["PREEMPTED", "COMPLETED"])
    slurm.sacct_states(hi, ["COMPLETED"])
    first, second = slurm.sacct(low)[-2:]
    (urgent,) = slurm.sacct(hi)
    assert (first["Partition"], urgent["Partition"]) == ("debug", "urgent")
    # ISO timestamps compare as strings; the urgent job ran between the two runs.
    assert first["End"] <= urgent["Start"] <= urgent["End"] <= second["Start"]
    print(f"urgent job COMPLETED {preempt_s:.1f} s after submission, preempted job rerun ok")


def test_every_option_sbatch_lists_is_reserved_by_its_own_name_or_not_at_all(slurm):
    """launch.slurm.extra refuses reserved options also by abbreviation; an option of sbatch's own whose
    whole name starts a reserved one (sbatch takes it exactly) would be refused by mistake. Checked against
    the options of the cluster's real sbatch, with the reserved ones that it must know."""
    import re

    from cinescene.config.launch import RESERVED_SBATCH_OPTIONS, reserved_option

    listed = set(re.findall(r"--([a-z][a-z0-9-]*)", slurm.run(["sbatch", "--help"]).stdout))
    assert {"nodelist", "nodefile", "output", "time", "time-min", "wrap"} <= listed  # the help was read
    wrong = {name: reserved_option(f"--{name}=x") for name in listed}
    assert {name: got for name, got in wrong.items() if got not in (None, name)} == {}
    assert (
        {"account", "array", "chdir", "nodes", "output", "signal", "time", "wrap"}
        <= {name for name, got in wrong.items() if got == name}
        <= set(RESERVED_SBATCH_OPTIONS)
    )
