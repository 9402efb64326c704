"""Metrics out: ``<run.dir>/metrics.jsonl`` and Weights & Biases (rank 0 only), with secrets scrubbed.

metrics.jsonl holds one JSON object per logged step (``step``, ``loss``,
``lr``, ``grad_norm``, ``samples_per_s``, ``data/skipped``, ...). A resumed run first drops the
lines past the checkpoint it resumes from (they were logged by the attempt
that died after that checkpoint and are logged again), so the file reads as
one uninterrupted run; a half-written last line from a crash goes too.

W&B: the real library, ``tracking.wandb.mode`` (offline by default, files in
``<run.dir>/wandb``); the run id is kept in the checkpoint's trainer state
and a resumed job re-opens the same run (``resume="allow"``). Steps are
logged with ``step=`` = the optimizer step, so both outputs share one axis;
every row also carries that step as ``trainer/step``, the x-axis every
``eval/*`` series is defined against (``define_metric``): an evaluation's
points sit at the training step they evaluated, whatever else W&B counts.
The run holds the config (scrubbed) and the git commit of the code; its
summary names the last checkpoint the run saved (``checkpoint/path``,
``checkpoint/step``).

Secrets (:mod:`cinescene.secrets`): masked by value, never by key name, in
everything that goes out: the config and every other ``wandb.init``
argument (notes, tags, names), and our log lines.
"""

from __future__ import annotations

import functools
import logging
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cinescene.ckpt.layout import step_of
from cinescene.config.tracking import TrackingConfig
from cinescene.log import ROOT, get_logger
from cinescene.provenance import git_state
from cinescene.run_dir import RunDir
from cinescene.secrets import mask_text, scrub, secret_values

from .callbacks import Callback, StepResult, TrainState

_log = get_logger("train.tracking")

# The x-axis of W&B series defined against the training step (every row carries it).
STEP_METRIC = "trainer/step"
# Series plotted against STEP_METRIC: the eval hook's, logged at the step they evaluated.
STEP_SERIES = ("eval/*",)
# Summary keys naming the last checkpoint the run saved.
CHECKPOINT_PATH, CHECKPOINT_STEP = "checkpoint/path", "checkpoint/step"


class SecretFilter(logging.Filter):
    """Masks secret environment values in log records (message and arguments)."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = mask_text(record.getMessage(), self.secrets)
            record.args = None
        return True


def install_secret_filter() -> None:
    """Add the mask to every handler of the cinescene logger tree (after setup_logging)."""
    secrets = secret_values()
    for handler in logging.getLogger(ROOT).handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter(secrets))


def new_run_id(length: int = 8) -> str:
    """A W&B-style run id (lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


class Tracker:
    """The run's metric sinks. Every rank makes one; only rank 0 writes anything."""

    def __init__(
        self,
        cfg: TrackingConfig,
        run_dir: str | Path,
        *,
        is_main: bool,
        run_name: str,
        config: Mapping[str, Any],
        run_id: str | None,
        resume_step: int,
    ):
        self.cfg = cfg
        self.is_main = is_main
        self.run_dir = Path(run_dir)
        self.metrics = RunDir(self.run_dir).metrics
        self._jsonl = None
        self._wandb_run = None
        self.run_id = run_id
        if not is_main:
            return
        if cfg.jsonl:
            dropped = self.metrics.keep_through(resume_step)
            if dropped:
                _log.info(
                    "%s: dropped %d lines past the resumed step %d", self.metrics.path, dropped, resume_step
                )
            self._jsonl = self.metrics.open_append()
        if cfg.wandb.mode != "disabled":
            self._start_wandb(run_name, dict(config))
            if run_id is not None and resume_step > 0:
                self._backfill_wandb(resume_step)

    def _start_wandb(self, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        w = self.cfg.wandb
        self.run_id = self.run_id or new_run_id()
        hidden = secret_values(config=config)
        # Every argument that ends up in the run's files is masked, not only the config.
        shown = scrub(
            {
                "project": w.project,
                "entity": w.entity,
                "group": w.group,
                "name": w.name or run_name,
                "tags": list(w.tags) or None,
                "notes": w.notes,
                "config": config,
            },
            hidden,
        )
        # The commit of the code that runs, not of the directory the run was started from.
        commit = git_state()["commit"]
        self._wandb_run = wandb.init(
            **shown,
            mode=w.mode,
            dir=str(self.run_dir),
            id=self.run_id,
            resume="allow",
            settings=wandb.Settings(silent=True, **({"git_commit": commit} if commit else {})),
        )
        self._wandb_run.define_metric(STEP_METRIC)
        for pattern in STEP_SERIES:
            self._wandb_run.define_metric(pattern, step_metric=STEP_METRIC)
        _log.info("W&B run %s (%s) in %s", self.run_id, w.mode, RunDir(self.run_dir).wandb)

    def _backfill_wandb(self, resume_step: int) -> None:
        """Log again the rows up to the resumed step that the W&B run may lack: a preemption's SIGTERM
        also reaches the W&B service, which then dies without writing what it had buffered."""
        if self._wandb_run is None or not self.cfg.jsonl:
            return
        first = self._wandb_run.step  # W&B's next step (0 offline: W&B merges offline runs by step)
        for row in self.metrics.rows():
            if first <= row["step"] <= resume_step and self._wandb_run is not None:
                values = {
                    k: (float(v) if v in ("nan", "inf", "-inf") else v)
                    for k, v in row.items()
                    if k != "step" and v is not None
                }
                log = functools.partial(
                    self._wandb_run.log, _with_step(values, row["step"]), step=row["step"]
                )
                self._guarded("log", log)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        if self._jsonl is not None:
            self.metrics.write_row(self._jsonl, step, metrics)
        if self._wandb_run is not None:
            run = self._wandb_run
            values = _with_step({k: v for k, v in metrics.items() if v is not None}, step)
            self._guarded("log", lambda: run.log(values, step=step))

    @property
    def logs_media(self) -> bool:
        """Whether :meth:`log_media` goes anywhere (rank 0, W&B on): callers build W&B objects only then."""
        return self._wandb_run is not None

    def log_media(self, step: int, media: Mapping[str, Any]) -> None:
        """W&B objects (tables, videos, images) at ``step``, into the same row as the step's metrics;
        metrics.jsonl holds numbers only (the files these objects were made from lie in the run directory)."""
        if self._wandb_run is not None:
            self._wandb_run.log(_with_step(dict(media), step), step=step)

    def close(self, exit_code: int = 0, preempted: bool = False, checkpoint: str | None = None) -> None:
        """Flush and close; a preempted run is marked so (W&B shows it as preempted, not failed).
        ``checkpoint``: the last checkpoint the run saved, for the W&B summary."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb_run is not None:
            run = self._wandb_run
            if checkpoint is not None:
                summary = {CHECKPOINT_PATH: str(checkpoint), CHECKPOINT_STEP: step_of(Path(checkpoint))}
                self._guarded("summary", lambda: run.summary.update(summary))
            if preempted:
                self._guarded("mark_preempting", run.mark_preempting)
            if self._wandb_run is not None:
                self._guarded("finish", lambda: run.finish(exit_code=exit_code))
            self._wandb_run = None

    def _guarded(self, what: str, call) -> None:
        """A W&B call that must not take the run down with it. SLURM signals every process of a job
        step, and the W&B service exits on the SIGTERM of a preemption, scancel or time limit while
        the ranks still save: this start then goes on without W&B, and the next resumes the run."""
        try:
            call()
        except Exception as exc:  # the service's socket errors have no common base class
            _log.warning(
                "W&B %s failed (%s: %s): no more W&B in this start; metrics.jsonl goes on and a "
                "resumed job continues the same W&B run",
                what,
                type(exc).__name__,
                exc,
            )
            self._wandb_run = None
            import wandb

            try:
                wandb.teardown()  # also drops wandb's exit hook, which would fail the same way
            except Exception:
                pass


def _with_step(values: dict[str, Any], step: int) -> dict[str, Any]:
    """A W&B row: ``values`` and the training step they belong to (the x-axis of STEP_SERIES)."""
    return {**values, STEP_METRIC: step}


# StepResult.extra entry the loop fills: unreadable samples replaced in this step, summed over
# data-parallel ranks; MetricsLogger turns it into the cumulative SKIPPED_SAMPLES_METRIC.
STEP_SKIPPED_SAMPLES = "data/skipped_in_step"
SKIPPED_SAMPLES_METRIC = "data/skipped"


class MetricsLogger(Callback):
    """Every ``tracking.log_every_steps`` steps (and on a stopping step): one row to the tracker.

    It also keeps the run's count of skipped (unreadable, replaced) samples, ``data/skipped``:
    cumulative since step 0, the same on every rank, and part of the checkpoint (this callback's
    state), so a resumed run continues it. Rank 0 warns when it has grown since the last row.
    """

    name = "metrics_logger"

    def __init__(self, tracker: Tracker, every: int):
        self.tracker = tracker
        self.every = every
        self.skipped_samples = 0
        self.skipped_logged = 0  # the count in the last row

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        self.skipped_samples += int(result.extra.get(STEP_SKIPPED_SAMPLES, 0))
        if result.step % self.every and not (
            state.stop or state.fatal or state.log_requested or result.step >= state.max_steps
        ):
            return
        extra = {k: v for k, v in result.extra.items() if k != STEP_SKIPPED_SAMPLES}
        row = {
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "step_skipped": int(not result.applied),
            "consumed_samples": state.consumed_samples,
            SKIPPED_SAMPLES_METRIC: self.skipped_samples,
            **extra,
            **state.metrics,
        }
        self.tracker.log(result.step, row)
        if self.skipped_samples > self.skipped_logged and self.tracker.is_main:
            _log.warning(
                "step %d: %d unreadable samples skipped so far (%d since the last metrics row); each "
                "was replaced by the next readable one, and the rank logs name their shards",
                result.step,
                self.skipped_samples,
                self.skipped_samples - self.skipped_logged,
            )
        self.skipped_logged = self.skipped_samples
        if result.step % self.every == 0 or result.step >= state.max_steps:
            _log.info(
                "step %d/%d  loss %.5f  lr %.3g  grad norm %.4g  %.2f samples/s",
                result.step,
                state.max_steps,
                result.loss,
                result.lr,
                result.grad_norm,
                state.metrics.get("samples_per_s") or 0.0,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_samples": self.skipped_samples, "skipped_logged": self.skipped_logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_samples = int(state.get("skipped_samples", 0))
        self.skipped_logged = int(state.get("skipped_logged", self.skipped_samples))
