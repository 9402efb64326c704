"""`cinescene.slurm.submit` / `sweep` on the dev cluster: submitit's own Job objects, our batch side.

Two runs of the smoke job are submitted from Python at once: a reference, and one that an `urgent`
job preempts (the preemption of tests/slurm/test_training_jobs.py, on the second node where it
preempts nothing else). SLURM requeues it, it resumes, ends with the reference's weights, and its
``job.result()`` says it was restarted once. A sweep of 4 short trials goes through
``cinescene.slurm.sweep`` as one throttled array, and its jobs' results are what `cinescene sweep
status` reports.
"""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
import yaml

import cinescene.slurm
from cinescene.ckpt import weights_digest

from .test_training_jobs import JOB_TIMEOUT_S, SMOKE, STEPS, TRAIN, Job, preempt

pytestmark = pytest.mark.slurm

ONE_NODE = {"nodes": 1, "gpus_per_node": 0}
SWEEP_STEPS = 4
SHORT = ["launch.nproc=1", f"train.max_steps={SWEEP_STEPS}", "checkpoint.every_steps=2"]


def _wait(job, timeout: float = JOB_TIMEOUT_S) -> None:
    """submitit's own wait, bounded (``job.result()`` alone would wait forever on a job that never ends)."""
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (job.wait(), done.set()), daemon=True)
    waiter.start()
    assert done.wait(timeout), f"job {job.job_id} still {job.state} after {timeout} s"


@pytest.fixture(scope="module")
def python_jobs(slurm_cluster, tmp_path_factory):
    slurm = slurm_cluster
    root = tmp_path_factory.mktemp("submitit")
    first, second = slurm.nodes[0], slurm.nodes[-1]
    jobs, failures = {}, {}
    for name, node in (("reference", first), ("preempted", second)):
        jobs[name] = cinescene.slurm.submit(
            SMOKE, [f"run.dir={root / name}", *TRAIN], **ONE_NODE, extra=[f"--nodelist={node}"]
        )
        slurm.track(jobs[name].job_id)

    def interrupt():
        try:
            preempt(slurm, Job(jobs["preempted"].job_id, root / "preempted"))
        except BaseException as exc:  # the test's failure
            failures["preempted"] = exc

    action = threading.Thread(target=interrupt, daemon=True)
    action.start()
    yield jobs, root, action, failures
    slurm.cancel_submitted()


def test_python_submit_preempted_requeues_and_ends_bit_exact_with_restarts_in_its_result(
    slurm_cluster, python_jobs
):
    jobs, root, action, failures = python_jobs
    action.join(JOB_TIMEOUT_S)
    assert not failures, failures
    _wait(jobs["reference"])
    _wait(jobs["preempted"])
    reference, job = jobs["reference"].result(), jobs["preempted"]
    result = job.result()
    final = root / "preempted" / "checkpoints" / f"step_{STEPS:08d}"
    assert result == {
        "run_dir": str(root / "preempted"),
        "step": STEPS,
        "checkpoint": str(final),
        "loss": result["loss"],
        "restarts": 1,
    } and isinstance(result["loss"], float)
    assert reference["restarts"] == 0 and reference["step"] == STEPS
    assert weights_digest(final) == weights_digest(Path(reference["checkpoint"]))
    assert slurm_cluster.wait(job.job_id, timeout=60) == "COMPLETED"  # the result comes before the job ends
    assert job.get_info()["State"] == "COMPLETED" and job.done()  # submitit's accounting says so too
    slurm_cluster.sacct_states(job.job_id, ["PREEMPTED", "COMPLETED"])
    log = job.paths.stdout.read_text()  # submitit's log of the job is the job's log: both starts
    assert log.count(f"cinescene.slurm: job {job.job_id}, start") == 2
    assert "SLURM is ending job" in log and "requeueing" not in log  # SLURM requeued it, not we
    assert log.count("Job completed successfully") == 1  # only the last start left a result
    run_slurm = root / "preempted" / "slurm"
    assert (run_slurm / f"{job.job_id}.out").resolve() == job.paths.stdout
    assert (run_slurm / "jobs").read_text().split() == [job.job_id]
    assert {p.name for p in run_slurm.glob("*.start-*.json")} == {
        f"{job.job_id}.start-0.json",
        f"{job.job_id}.start-1.json",
    }
    assert stat.S_IMODE(job.paths.folder.stat().st_mode) == 0o700


def status_rows(slurm, spec: Path) -> list[dict]:
    out = slurm.cinescene(["sweep", "status", str(spec), *SHORT, "--json"])
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_a_sweep_of_four_returns_four_jobs_whose_results_match_sweep_status(slurm, repo_root, tmp_path):
    spec = yaml.safe_load((repo_root / "configs/sweeps/smoke_lr.yaml").read_text())
    spec["sweep"].update(
        base=str((repo_root / "configs/sweeps" / spec["sweep"]["base"]).resolve()),
        run_root=str(tmp_path / "sweep"),
    )
    path = tmp_path / "smoke_lr.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    jobs = cinescene.slurm.sweep(path, SHORT, max_parallel=2)
    for job in jobs:
        slurm.track(job.job_id)
    assert len(jobs) == 4 and len({j.job_id.partition("_")[0] for j in jobs}) == 1  # one array
    for job in jobs:
        _wait(job)
    results = [job.result() for job in jobs]
    rows = status_rows(slurm, path)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 4
    assert [r["job"] for r in rows] == [j.job_id for j in jobs]
    assert [(r["run_dir"], r["step"], r["loss"], r["restarts"]) for r in rows] == [
        (x["run_dir"], x["step"], x["loss"], x["restarts"]) for x in results
    ]
    assert {x["step"] for x in results} == {SWEEP_STEPS}
    # Submitting again submits nothing: every trial is finished.
    assert cinescene.slurm.sweep(path, SHORT, max_parallel=2) == []


def test_a_cancelled_job_has_no_result(slurm, tmp_path):
    from submitit.core.utils import UncompletedJobError

    job = cinescene.slurm.submit(
        SMOKE, [f"run.dir={tmp_path / 'run'}", "train.max_steps=400"], **ONE_NODE, time="1:00"
    )
    slurm.track(job.job_id)
    job.cancel()
    _wait(job, timeout=120)
    assert job.get_info()["State"].startswith("CANCELLED")
    with pytest.raises(UncompletedJobError):
        job.result()
