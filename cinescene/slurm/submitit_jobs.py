"""Training jobs submitted from Python with submitit: its executor, folders, accounting and ``Job`` objects.

::

    import cinescene.slurm
    job = cinescene.slurm.submit("configs/experiments/smoke.yaml", ["train.lr=1e-4"], nodes=1)
    job.job_id, job.state, job.done(), job.paths.stdout
    job.result()   # {"run_dir", "step", "checkpoint", "loss", "restarts"}
    jobs = cinescene.slurm.sweep("configs/sweeps/smoke_lr.yaml", max_parallel=2)

``resources`` are ``launch.slurm`` keys (``nodes``, ``gpus_per_node``, ``partition``, ``time``, ...):
overrides like `cinescene submit`'s flags, validated with the rest of the config before anything is
submitted, and reaching sbatch through the same option list (:func:`cinescene.slurm.sbatch.resource_options`).

The job is the one `cinescene slurm-job` runs (:func:`cinescene.slurm.job.run_start`): submitit runs
:func:`batch_job` in the batch script itself (``use_srun=False``), and that process starts the ranks with
srun and alone decides the requeue; the ranks own the preemption signals. submitit's own signal handling
(SIGTERM, SIGCONT, its USR2 checkpoint-and-requeue) is put back to what the batch script of
``train.sbatch`` has before the job starts. A start that requeued the job, or that SLURM is ending, leaves
no result: submitit's ``Job`` goes on waiting for the next start, whose result is the run's final record.

Job folders. submitit pickles :func:`batch_job` and its arguments into ``<run.dir>/slurm/submitit/``
(``<run_root>/slurm/submitit/`` for a sweep's array) and loads that pickle in the batch job. The folder is
the submitting user's own, for their own job: created private (0700) and refused when it is not theirs
or others may write it, at submission and again by the batch script before it loads anything
(docs/CONTRACTS.md, "Files are data"). The job's log is submitit's ``job.paths.stdout`` (stderr goes to it
as well); ``<run.dir>/slurm/<job>.out`` links to it, so a run directory reads the same however it was
submitted.
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cinescene.config import ConfigError, load_config
from cinescene.config.sweep import as_override, base_config, expand_sweep
from cinescene.distributed.slurm_env import job_label, restart_count
from cinescene.errors import CineSceneError
from cinescene.run_dir import RunDir

from . import sbatch, sweeps
from .accounting import check_no_live_job
from .records import record_job

# How a run reaches SLURM: sbatch with train.sbatch (`cinescene submit`), or submitit's executor.
SUBMIT_VIA = ("sbatch", "submitit")
JOB_FOLDER = "submitit"


def job_folder(root: str | os.PathLike) -> Path:
    """The submitit folder of a run directory (or of a sweep's run_root, for its array)."""
    return RunDir(root).slurm.resolve() / JOB_FOLDER


def private_folder(folder: Path) -> Path:
    """``folder``, created 0700; refused (one line) when it is a symlink, another user's or no directory."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = folder.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise CineSceneError(
            f"{folder} must be a directory of your own (not a symlink): submitit keeps the job's pickle there"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        folder.chmod(0o700)
    return folder


def folder_check(folder: Path) -> str:
    """The batch script's first line: load nothing from ``folder`` unless it is this user's and private."""
    quoted = shlex.quote(str(folder))
    message = shlex.quote(
        f"cinescene: error: {folder} is not a private (0700) directory of this user: "
        "refusing to load the job's pickle from it"
    )
    return (
        f'if [ -L {quoted} ] || [ "$(stat -c %u:%a -- {quoted})" != "$(id -u):700" ]; '
        f"then echo {message} >&2; exit 1; fi"
    )


def sbatch_parameters(launch) -> dict[str, Any]:
    """launch.slurm as submitit's ``additional_parameters``: the options `cinescene submit` gives sbatch."""
    parameters: dict[str, Any] = {"chdir": os.getcwd()}
    for option in sbatch.resource_options(launch):
        name, sep, value = option.removeprefix("--").partition("=")
        parameters[name.replace("-", "_")] = value if sep else True
    return parameters


def executor(folder: Path, launch, job_name: str, array_parallelism: int | None = None):
    """submitit's SLURM executor for jobs of ``launch`` whose pickles and logs go to ``folder``."""
    if "%" in str(folder):
        raise CineSceneError(
            f"{folder}: submitit reads '%' in a job folder as a pattern; choose a run.dir without it"
        )
    import submitit

    try:
        ex = submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable))
    except RuntimeError:  # no srun on PATH
        raise CineSceneError("`srun` is not on PATH: submitting needs a SLURM client") from None
    ex.update_parameters(
        job_name=job_name,
        use_srun=False,  # the job function is the batch process: it sruns the ranks itself
        stderr_to_stdout=True,
        setup=[folder_check(folder)],
        additional_parameters=sbatch_parameters(launch),
        **({"array_parallelism": array_parallelism} if array_parallelism else {}),
    )
    return ex


def describe(ex) -> str:
    """What ``--dry-run`` prints for a submitit submission: the sbatch call and the script it submits."""
    script = ex._make_submission_file_text(ex._submitit_command_str, "dry-run")
    return f"sbatch {ex.folder}/<job>_submission.sh\n\n{script}"


def resource_overrides(resources: Mapping[str, Any]) -> list[str]:
    """``{"nodes": 2}`` -> ``["launch.slurm.nodes=2"]``: resources are launch.slurm keys."""
    return [as_override(f"launch.slurm.{key}", value) for key, value in resources.items()]


def _submitted(submit_call):
    """Run a submitit submission; sbatch's refusal becomes one line."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        return submit_call()
    except (FailedJobError, FailedSubmissionError) as exc:
        message = " ".join(str(exc).split()) or "no message"
        raise CineSceneError(f"sbatch refused the job: {message}") from None


def submit(config: str | os.PathLike, overrides: Sequence[str] = (), **resources):
    """Submit one training run; returns submitit's ``Job`` (its result is the run's final record)."""
    overrides = [*overrides, *resource_overrides(resources)]
    cfg, _ = load_config(config, overrides)
    run_dir = Path(cfg.run.dir)
    check_no_live_job(run_dir)
    ex = executor(job_folder(run_dir), cfg.launch, cfg.run.name)
    private_folder(ex.folder)
    job = _submitted(lambda: ex.submit(batch_job, str(config), overrides))
    record_job(run_dir, job.job_id)
    return job


def sweep(
    spec: str | os.PathLike, overrides: Sequence[str] = (), *, max_parallel: int | None = None, **resources
):
    """Submit a sweep's unfinished trials as one job array; returns their ``Job`` objects in trial order.

    Like `cinescene sweep`: trials that are finished or still queued are skipped (so the list may be shorter
    than the sweep), the others resume from their own checkpoints; `cinescene sweep status` reads the same
    records."""
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError("max_parallel", f"expected a value >= 1, got {max_parallel}")
    overrides = [*overrides, *resource_overrides(resources)]
    spec_obj, trials = expand_sweep(spec, overrides)
    run_root = Path(spec_obj.run_root)
    base = str(base_config(spec, spec_obj))
    with sweeps.sweep_lock(run_root):
        todo = [p.trial for p in sweeps.plan(trials) if p.action == "submit"]
        if not todo:
            return []
        ex = executor(job_folder(run_root), sweeps.shared_launch(todo), spec_obj.name, max_parallel)
        private_folder(ex.folder)
        sweeps.write_trial_records(spec_obj, todo)

        def submit_all():
            with ex.batch():
                return [ex.submit(batch_job, base, list(t.overrides)) for t in todo]

        jobs = _submitted(submit_all)
        for trial, job in zip(todo, jobs):
            record_job(trial.run_dir, job.job_id)
    return jobs


# ------------------------------------------------------------------ the batch job
def _release_submitit_signals() -> None:
    """Put back what submitit's job runner changed: the batch process of train.sbatch handles SIGTERM and
    the preemption warnings itself (JobSignals) and leaves every other signal at its default."""
    from submitit import JobEnvironment

    for signum in {signal.SIGTERM, signal.SIGCONT, JobEnvironment._usr_sig()}:
        signal.signal(signum, signal.SIG_DFL)


def _link_log(run_dir: str, label: str, log: Path) -> None:
    """``<run.dir>/slurm/<job>.out`` -> submitit's log of the job, where this start's output goes."""
    link = RunDir(run_dir).job_log(label)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) == log:
        return
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(log)
    os.replace(tmp, link)


def batch_job(config_path: str, overrides: Sequence[str]) -> dict:
    """One start of a submitit job, in its batch script: what `cinescene slurm-job CONFIG ...` does.

    Returns the run's final record when the ranks finished; raises a one-line CineSceneError when they
    failed for good; leaves without a result (SystemExit) when the job comes back (requeued by this
    process, or by SLURM after a preemption) or SLURM ends it."""
    from submitit import JobEnvironment

    from .job import DONE, final_record, run_start

    _release_submitit_signals()
    cfg, _ = load_config(config_path, list(overrides))
    _link_log(cfg.run.dir, job_label(), JobEnvironment().paths.stdout)
    outcome = run_start(cfg, config_path, list(overrides))
    if outcome.requeued or outcome.ending:
        raise SystemExit(0 if outcome.requeued else outcome.status)
    if outcome.status != DONE:
        raise CineSceneError(outcome.why)
    return final_record(cfg, restart_count())


__all__ = ["SUBMIT_VIA", "batch_job", "executor", "job_folder", "submit", "sweep"]
