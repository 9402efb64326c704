"""`cinescene submit` on the dev cluster: real training jobs preempted, timed out, signalled, killed.

Every job trains the smoke config (2 ranks, ZeRO-3 over gloo) for STEPS steps; an
uninterrupted job is the reference, and each interrupted one must requeue itself,
resume and end with bit-identical weights. One fixture submits every job of the module
at once, each with its interruption running in a thread alongside (they share the first
node; the preempted job is alone on the second, where its `urgent` job preempts nothing
else); each test then waits for its own job and checks what it left behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cinescene.ckpt.weights import weights_digest

pytestmark = pytest.mark.slurm

SMOKE = "configs/experiments/smoke.yaml"
STEPS = 40
# What every compared job shares: the reference and the interrupted ones differ in nothing else.
TRAIN = [f"train.max_steps={STEPS}", "checkpoint.every_steps=10", "tracking.wandb.mode=disabled"]
ONE_NODE = ["--nodes", "1", "--gpus-per-node", "0"]
JOB_TIMEOUT_S = 600
# The bit of SIGUSR1 in /proc/<pid>/status's SigPnd/ShdPnd masks.
USR1_PENDING = 1 << (signal.SIGUSR1 - 1)
# User strings a shell would run: each must reach the job as it is.
NOTES = "a;b $(touch PWNED) `touch PWNED` \"dq\" 'sq' sp  ace\nnew line"
NAME = "hostile;$(touch PWNED) `touch PWNED`"
COMMENT = "c;$(touch PWNED) `touch PWNED` 'q' \"q\""
HOSTILE = [f"tracking.wandb.notes={json.dumps(NOTES)}", f"run.name={json.dumps(NAME)}"]


@dataclass
class Job:
    id: str
    run_dir: Path
    # The interruption a test inflicts, running in its own thread while every job trains.
    action: threading.Thread | None = None
    failure: BaseException | None = None

    def log(self) -> str:
        path = self.run_dir / "slurm" / f"{self.id}.out"
        return path.read_text() if path.exists() else ""

    def rank0_log(self) -> str:
        path = self.run_dir / "logs" / "rank0.log"
        return path.read_text() if path.exists() else ""

    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]

    def step(self) -> int:
        rows = self.metrics()
        return rows[-1]["step"] if rows else 0

    def digest(self) -> str:
        return weights_digest(self.run_dir / "checkpoints" / f"step_{STEPS:08d}")

    def interrupted(self) -> None:
        """Wait for the test's interruption to be done; its failure is the test's."""
        if self.action is not None:
            self.action.join(timeout=JOB_TIMEOUT_S)
            assert not self.action.is_alive(), f"the interruption of job {self.id} is still running"
        if self.failure is not None:
            raise self.failure


def on_node(node: str) -> str:
    return f"launch.slurm.extra=[--nodelist={node}]"


def wait_done(slurm, job: Job, expected: str = "COMPLETED") -> None:
    job.interrupted()
    state = slurm.wait(job.id, timeout=JOB_TIMEOUT_S, poll=0.5)
    assert state == expected, f"job {job.id} ended {state}:\n{job.log()[-4000:]}"


def wait_step(slurm, job: Job, step: int, timeout: float = 400) -> None:
    slurm.wait_for(f"job {job.id} to reach step {step}", lambda: job.step() >= step, timeout, poll=0.3)


def restarts(slurm, job: Job) -> int:
    return int(slurm.jobs(job.id)[0].get("Restarts", "0"))


# ----------------------------------------------------------- interruptions
def hit_time_limit(slurm, job: Job) -> None:
    """SLURM checks time limits every 30 s, so its warning comes up to 30 s after it is due. To
    make it reach a start that is still training, the ranks are paused (SIGSTOP) while the time
    limit is lowered, until the warning has come (slurmstepd sends SIGCONT with it; else it is
    pending in both and they are continued here); the requeued start gets its long time limit
    back, so the job restarts exactly once."""
    wait_step(slurm, job, 3)
    pids = slurm.rank_pids(job.id)
    assert sorted(pids) == [0, 1], pids
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    try:
        elapsed = _run_seconds(slurm.jobs(job.id)[0]["RunTime"])
        # Ends 45..105 s from now: inside the 120 s warning, and time to save before the kill.
        slurm.run(["scontrol", "update", f"JobId={job.id}", f"TimeLimit={math.ceil((elapsed + 45) / 60)}"])
        slurm.wait_for(
            "the time-limit warning",
            lambda: (
                "preemption requested (SIGUSR1)" in job.rank0_log()
                or all(_pending(pid) & USR1_PENDING for pid in pids.values())
            ),
            timeout=60,
        )
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # continued by SLURM, saved and gone
    slurm.wait_for("the requeue", lambda: restarts(slurm, job) == 1, timeout=180)
    slurm.run(["scontrol", "update", f"JobId={job.id}", "TimeLimit=30"])


def kill_a_rank(slurm, job: Job) -> None:
    wait_step(slurm, job, 13)  # past the checkpoint at step 10
    os.kill(slurm.rank_pids(job.id)[1], signal.SIGKILL)


def signal_twice(slurm, job: Job) -> None:
    """scancel --signal=USR1 --batch (the batch process forwards it), then --full."""
    wait_step(slurm, job, 2)
    again = slurm.cinescene(["submit", SMOKE, *ONE_NODE, f"run.dir={job.run_dir}"], check=False)
    assert again.returncode == 1 and again.stderr.strip() == (
        f"cinescene submit: error: {job.run_dir} already has job {job.id} (RUNNING); "
        f"one job per run directory (scancel {job.id} first, or choose another run.dir)"
    ), again.stderr
    slurm.run(["scancel", "--signal=USR1", "--batch", job.id])
    slurm.wait_for("the first requeue", lambda: restarts(slurm, job) == 1, timeout=180)
    slurm.wait_for(
        "the second start to train",
        lambda: bool(job.metrics()) and job.metrics()[-1]["restarts"] == 1,
        timeout=400,
        poll=0.1,
    )
    slurm.run(["scancel", "--signal=USR1", "--full", job.id])


def signal_past_max_restarts(slurm, job: Job) -> None:
    wait_step(slurm, job, 2)
    slurm.run(["scancel", "--signal=USR1", job.id])  # the job's steps: the ranks


def preempt(slurm, job: Job) -> None:
    wait_step(slurm, job, 5)
    slurm.preempt(job.id)


def submit_two_nodes(slurm, job: Job) -> None:
    """2 nodes x 1 task, submitted once the preemption on the second node is over."""
    job.id = slurm.submit_run(
        [SMOKE, "--nodes", "2", "--gpus-per-node", "0", "launch.nproc=1", f"run.dir={job.run_dir}", *TRAIN]
    )


def _act(slurm, job: Job, action, after=(), after_actions=()) -> None:
    """Run ``action`` in a thread, once the jobs ``after`` have ended and the actions of
    ``after_actions`` are done."""

    def run():
        try:
            for other in after:
                slurm.wait(other.id, timeout=JOB_TIMEOUT_S)
            for other in after_actions:
                other.action.join(timeout=JOB_TIMEOUT_S)
            action(slurm, job)
        except BaseException as exc:  # handed to the test by Job.interrupted
            job.failure = exc
            if job.id:
                slurm.cancel(job.id)  # a job its test gave up on must not hold CPUs the others need

    job.action = threading.Thread(target=run, daemon=True)
    job.action.start()


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory) -> dict[str, Job]:
    """Submit every job of the module at once, each with its interruption running alongside."""
    slurm = slurm_cluster
    root = tmp_path_factory.mktemp("jobs")
    first = slurm.nodes[0]
    # The preempted job runs alone on the second node, where its `urgent` job preempts nothing else.
    second = slurm.nodes[1] if len(slurm.nodes) > 1 else None
    plan = {
        "reference": ([], None),
        "timelimit": (["launch.slurm.signal=USR1@120"], hit_time_limit),
        "killed": ([], kill_a_rank),
        "signalled": ([], signal_twice),
        "bounded": (["train.max_steps=400", "launch.max_restarts=0"], signal_past_max_restarts),
    }
    submitted: dict[str, Job] = {}
    for name, (extra, action) in plan.items():
        run_dir = root / name
        submitted[name] = Job(
            slurm.submit_run([SMOKE, *ONE_NODE, f"run.dir={run_dir}", *TRAIN, *extra, on_node(first)]),
            run_dir,
        )
        if action:
            _act(slurm, submitted[name], action)
    hostile = root / "inj $(touch PWNED); `touch PWNED` x"
    extra = f"launch.slurm.extra=[{json.dumps('--comment=' + COMMENT)},--nodelist={first}]"
    submitted["hostile"] = Job(
        slurm.submit_run(
            [
                SMOKE,
                *ONE_NODE,
                *HOSTILE,
                f"run.dir={json.dumps(str(hostile))}",
                extra,
                "train.max_steps=2",
                "tracking.wandb.mode=disabled",
            ]
        ),
        hostile,
    )
    preempted_args = [
        SMOKE,
        *ONE_NODE,
        f"run.dir={root / 'preempted'}",
        *TRAIN,
        "tracking.wandb.mode=offline",
    ]
    if second:
        submitted["preempted"] = Job(slurm.submit_run([*preempted_args, on_node(second)]), root / "preempted")
        _act(slurm, submitted["preempted"], preempt)
        submitted["two_nodes"] = Job("", root / "two_nodes")
        _act(slurm, submitted["two_nodes"], submit_two_nodes, after_actions=[submitted["preempted"]])
    else:  # one node: the preemption comes once the other jobs have left it
        others = list(submitted.values())
        submitted["preempted"] = job = Job("", root / "preempted")

        def submit_then_preempt(slurm, job):
            job.id = slurm.submit_run([*preempted_args, on_node(first)])
            preempt(slurm, job)

        _act(slurm, job, submit_then_preempt, after=others)
    yield submitted
    slurm.cancel_submitted()


@pytest.fixture(scope="module")
def reference(slurm_cluster, jobs) -> str:
    job = jobs["reference"]
    wait_done(slurm_cluster, job)
    return job.digest()


def test_submit_dry_run_prints_the_sbatch_call_and_submits_nothing(slurm, repo_root):
    before = slurm.run(["squeue", "-h", "-o", "%i"]).stdout.split()
    out = slurm.cinescene(["submit", SMOKE, *ONE_NODE, "--dry-run"])
    line = out.stdout.splitlines()[0]
    for option in [
        "sbatch",
        "--nodes=1",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--time=00:30:00",
        "--signal=USR1@60",
        "--requeue",
        "--open-mode=append",
        f"--chdir={repo_root}",
        f"--output={repo_root}/runs/smoke/slurm/%j.out",
        "cinescene/slurm/train.sbatch",
        f"{SMOKE} launch.slurm.nodes=1 launch.slurm.gpus_per_node=0",
    ]:
        assert option in line, f"{option!r} not in {line!r}"
    assert "--gpus-per-node" not in line  # CPU-only: no GPU request
    assert 'exec "${CINESCENE_PYTHON:-python3}" -m cinescene slurm-job "$@"' in out.stdout
    assert slurm.run(["squeue", "-h", "-o", "%i"]).stdout.split() == before


def test_submitted_job_completes_with_a_checkpoint_and_its_environment(slurm_cluster, jobs, reference):
    job = jobs["reference"]
    assert (job.run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
    assert [r["step"] for r in job.metrics()] == list(range(1, STEPS + 1))
    assert {r["restarts"] for r in job.metrics()} == {0}
    record = json.loads((job.run_dir / "slurm" / f"{job.id}.start-0.json").read_text())
    assert record["job"] == job.id and record["restart"] == 0 and record["nodes"] == [slurm_cluster.nodes[0]]
    assert record["config"]["train"]["max_steps"] == STEPS and record["config"]["run"]["dir"] == str(
        job.run_dir
    )
    assert set(record["git"]) == {"commit", "dirty"} and record["packages"]["torch"]
    assert record["argv"][:2] == ["srun", "--kill-on-bad-exit=1"]
    assert "joined 2 ranks started by srun" in job.rank0_log()
    assert (job.run_dir / "slurm" / "jobs").read_text().split() == [job.id]


def test_time_limit_warning_saves_requeues_and_resumes_bit_exact(slurm_cluster, jobs, reference):
    slurm, job = slurm_cluster, jobs["timelimit"]
    wait_done(slurm, job)
    assert "preemption requested (SIGUSR1)" in job.rank0_log()
    assert "the ranks saved after a preemption signal: requeueing" in job.log()
    assert job.metrics()[-1]["restarts"] == 1 and job.metrics()[-1]["step"] == STEPS
    slurm.sacct_states(job.id, ["REQUEUED", "COMPLETED"])
    assert job.digest() == reference


def test_killed_rank_restarts_from_the_previous_checkpoint(slurm_cluster, jobs, reference):
    slurm, job = slurm_cluster, jobs["killed"]
    wait_done(slurm, job)
    assert re.search(r"ranks ended with status 1\d\d without saving: requeueing", job.log()), job.log()[
        -3000:
    ]
    resumed = re.findall(r"training steps (\d+)\.\.\d+ of \d+ \(resumed from .*step_(\d+)\)", job.rank0_log())
    assert len(resumed) == 1 and int(resumed[0][0]) == int(resumed[0][1]) + 1 and int(resumed[0][1]) >= 10
    rows = job.metrics()  # the steps after the checkpoint were trained again, each logged once
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["restarts"] == 1
    assert job.digest() == reference


def test_signalled_job_requeues_twice_and_resumes_bit_exact(slurm_cluster, jobs, reference):
    slurm, job = slurm_cluster, jobs["signalled"]
    wait_done(slurm, job)
    assert job.log().count("the ranks saved after a preemption signal: requeueing") == 2
    assert job.rank0_log().count("preemption requested (SIGUSR1)") == 2
    assert [r["restarts"] for r in job.metrics()][-1] == 2
    assert [r["step"] for r in job.metrics()] == list(range(1, STEPS + 1))
    slurm.sacct_states(job.id, ["REQUEUED", "REQUEUED", "COMPLETED"])
    assert job.digest() == reference


def test_past_max_restarts_the_job_fails_with_one_line(slurm_cluster, jobs):
    slurm, job = slurm_cluster, jobs["bounded"]
    wait_done(slurm, job, "FAILED")
    errors = [line for line in job.log().splitlines() if line.startswith("cinescene")]
    assert errors == [
        f"cinescene slurm-job: error: job {job.id} was restarted 1 time and launch.max_restarts is "
        f"0: giving up; {job.run_dir} keeps its latest checkpoint, resubmit to continue from it"
    ], errors
    assert job.log().count("cinescene.slurm: job") == 3  # start 1, its requeue, start 2
    saves = [
        json.loads((p / "trainer_state.json").read_text())["reason"]
        for p in sorted((job.run_dir / "checkpoints").glob("step_*"))
    ]
    assert saves[-1] == "preemption" and job.step() < 400, saves


def test_urgent_job_preempts_and_the_job_resumes_bit_exact_in_the_same_wandb_run(
    slurm_cluster, jobs, reference
):
    from tests.fixtures.wandb_files import read_history, read_run_ids

    slurm, job = slurm_cluster, jobs["preempted"]
    wait_done(slurm, job)
    assert "preemption requested (SIGTERM)" in job.rank0_log()
    assert "SLURM is ending job" in job.log() and "requeueing" not in job.log()  # SLURM requeued it, not we
    slurm.sacct_states(job.id, ["PREEMPTED", "COMPLETED"])
    assert job.metrics()[-1]["restarts"] == 1
    assert job.digest() == reference
    assert len(set(read_run_ids(job.run_dir))) == 1  # the restarted job continued the same W&B run
    history = read_history(job.run_dir)  # complete, though SIGTERM also stopped the first W&B service
    assert sorted(history) == list(range(1, STEPS + 1))
    assert history[STEPS]["restarts"] == 1 and history[1]["restarts"] == 0


def _run_seconds(runtime: str) -> int:
    """scontrol's RunTime ("[D-]HH:MM:SS") in seconds."""
    days, _, clock = runtime.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def _pending(pid: int) -> int:
    """Signals pending for ``pid`` (its own and its thread group's), as a bit mask; 0 once it is gone."""
    mask = 0
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            mask |= int(line.split()[1], 16)
    return mask


def test_user_strings_reach_the_job_verbatim_and_never_as_shell_code(slurm_cluster, jobs, repo_root):
    slurm, job = slurm_cluster, jobs["hostile"]
    wait_done(slurm, job)
    record = json.loads((job.run_dir / "slurm" / f"{job.id}.start-0.json").read_text())
    saved = yaml.safe_load((job.run_dir / "config.yaml").read_text())  # what the ranks resolved
    for config in (record["config"], saved):
        assert config["tracking"]["wandb"]["notes"] == NOTES
        assert config["run"]["name"] == NAME and config["run"]["dir"] == str(job.run_dir)
    assert {*HOSTILE, f"run.dir={json.dumps(str(job.run_dir))}"} <= set(record["argv"])  # srun's arguments
    shown = slurm.run(["squeue", "-h", "-t", "all", "-j", job.id, "-o", "%j|%k"]).stdout.strip()
    assert shown == f"{NAME}|{COMMENT}"  # the job name and an extra sbatch option's value
    places = [repo_root, job.run_dir, job.run_dir.parent, job.run_dir / "slurm", Path.home(), Path("/tmp")]
    assert not [p for place in places for p in place.glob("PWNED*")]


def test_two_nodes_rendezvous_over_the_veth_pair_and_train_bit_exact(slurm_cluster, jobs, reference):
    if "two_nodes" not in jobs:
        pytest.skip("the dev cluster has one node (no network namespace on this machine)")
    slurm, job = slurm_cluster, jobs["two_nodes"]
    wait_done(slurm, job)
    record = json.loads((job.run_dir / "slurm" / f"{job.id}.start-0.json").read_text())
    assert record["nodes"] == slurm.nodes[:2] and record["slurm"]["SLURM_NTASKS"] == "2"
    master = (
        slurm.run(["scontrol", "show", "node", "-o", slurm.nodes[0]]).stdout.split("NodeAddr=")[1].split()[0]
    )
    assert not master.startswith("127.")  # the first node as the second one reaches it
    assert f"joined 2 ranks started by srun (backend gloo, rendezvous {master}:" in job.rank0_log()
    assert job.digest() == reference  # 2 nodes x 1 rank trains what 1 node x 2 ranks does
