"""`cinescene eval CKPT --data SHARDS --out DIR`: generate held-out samples on every rank, measure, report.

Flags become ``eval.*`` overrides of the checkpoint's config (``--data`` ->
``eval.data``, ``--num`` -> ``eval.num_samples``, ``--steps`` ->
``eval.sample_steps``, ``--metrics`` -> ``eval.metrics``), so the command
and the training hook read the same settings. Everything a user can get
wrong is checked before any rank starts (:func:`plan`): the checkpoint, the
data's resolution and encoder against the model's training data, and that
some held-out sample is left; each is one line and exit status 1.

Ranks: standalone, ``--nproc`` / ``launch.nproc`` local ranks are spawned;
under torchrun or srun each process is one rank. Rank r takes the selected
samples r, r + W, ...; every rank writes its samples' files (the mp4 in
``videos/``, the record in ``samples/``, the contact-sheet block in
``contact/``), and after a barrier rank 0 writes ``metrics.json``,
``table.md``, ``report.html`` and ``contact_sheet.png``. Logs: ``DIR/logs/rank<R>.log``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from cinescene import __version__
from cinescene.ckpt.config import checkpoint_config
from cinescene.ckpt.layout import refuse_inside_checkpoint
from cinescene.ckpt.locate import resolve_checkpoint
from cinescene.config import ConfigError
from cinescene.config.base import positive
from cinescene.config.eval import check_metric_names
from cinescene.config.paths import check_output_location
from cinescene.distributed.env import SPAWNER_MARK, detect, standalone
from cinescene.distributed.spawn import check_local_ranks, spawn_local_ranks
from cinescene.errors import CineSceneError
from cinescene.locks import DirLock, LockBusy
from cinescene.log import get_logger, setup_logging, show_progress_bars
from cinescene.sampling.checkpoint import load_inference_model
from cinescene.sampling.codec import build_codec
from cinescene.sampling.device import device_and_dtype
from cinescene.sampling.inputs import ShardSamples
from cinescene.sampling.pipeline import Settings, StepBar, VideoGenerator
from cinescene.sampling.spec import training_spec

from . import heldout, report
from .evaluate import evaluate_into, prepare_dir, record_unreadable
from .metrics import MetricContext

_log = get_logger("eval")
LOCK = ".eval.lock"


@dataclass(frozen=True)
class EvalRequest:
    """What `cinescene eval` is asked for: its arguments, one field per flag (``cinescene eval --help``
    says what each means; None: the checkpoint's config decides)."""

    checkpoint: str  # a run, checkpoints, step or export directory
    overrides: Sequence[str]  # KEY=VALUE overrides of the checkpoint's config
    data: str | None  # held-out shards (eval.data)
    out: str  # the output directory
    num: int | None  # eval.num_samples
    steps: int | None  # eval.sample_steps
    metrics: str | None  # comma-separated names (eval.metrics)
    ema: bool
    nproc: int | None  # local ranks when no launcher started this process
    device: str | None
    dtype: str | None  # fp32, bf16 or fp16 (cinescene.sampling.device.DTYPES)


@dataclass
class EvalPlan:
    source: object  # CheckpointSource
    cfg: object  # the checkpoint's config with the eval overrides
    spec: object  # DataSpec of the training data
    shards: str
    indices: list[int]  # selected held-out samples, manifest order
    keys: list[str]
    out: Path


def eval_overrides(request: EvalRequest) -> list[str]:
    """The flags as eval.* overrides (checked here so errors name the flag)."""
    items = []
    if request.data is not None:
        items.append(f"eval.data={request.data}")
    if request.num is not None:
        if request.num < 0:
            raise ConfigError(
                "--num", f"expected a value >= 0 (0 = every held-out sample), got {request.num}"
            )
        items.append(f"eval.num_samples={request.num}")
    if request.steps is not None:
        positive(request.steps, "--steps")
        items.append(f"eval.sample_steps={request.steps}")
    if request.metrics is not None:
        names = [n for n in request.metrics.split(",") if n]
        check_metric_names(names, "--metrics")
        items.append(f"eval.metrics=[{','.join(names)}]")
    return list(request.overrides) + items


def plan(request: EvalRequest) -> EvalPlan:
    """Resolve and check everything before any model is built (one-line errors)."""
    check_output_location(request.out, "--out")
    refuse_inside_checkpoint(request.out, "--out")
    source = resolve_checkpoint(request.checkpoint)
    cfg = checkpoint_config(source, eval_overrides(request))
    if not cfg.eval.data:
        raise CineSceneError("no evaluation data: pass --data SHARDS (or set eval.data)")
    spec = training_spec(cfg)
    chosen = heldout.choose(cfg, spec)
    return EvalPlan(source, cfg, spec, cfg.eval.data, chosen.indices, chosen.keys, Path(request.out))


def _lock(out: Path) -> DirLock:
    """Hold ``out/.eval.lock`` (a :class:`cinescene.locks.DirLock`: flock, or a lock file where flock does
    not hold across nodes); one-line error if another eval holds it."""
    if out.exists() and not out.is_dir():
        raise CineSceneError(f"--out {out} is a file, not a directory")
    try:
        return DirLock(
            out,
            LOCK,
            lambda holder: (
                f"another `cinescene eval` is writing into {out} ({holder}); wait for it or use another --out"
            ),
        ).acquire()
    except LockBusy as exc:
        raise CineSceneError(str(exc)) from None


def rank_argv(request: EvalRequest) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "cinescene",
        "eval",
        str(request.checkpoint),
        *request.overrides,
        "--out",
        str(request.out),
    ]
    for flag, value in (
        ("--data", request.data),
        ("--num", request.num),
        ("--steps", request.steps),
        ("--metrics", request.metrics),
        ("--device", request.device),
        ("--dtype", request.dtype),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--ema"] if request.ema else [])


def launch(request: EvalRequest) -> int:
    setup_logging("INFO")
    env = detect()
    the_plan = plan(request)
    spawned = os.environ.get(SPAWNER_MARK) == "1"
    lock = None if spawned or (env is not None and env.rank != 0) else _lock(the_plan.out)
    try:
        if env is None:
            nproc = the_plan.cfg.launch.nproc if request.nproc is None else request.nproc
            positive(nproc, "--nproc")
            check_local_ranks(nproc, "gloo", "--nproc" if request.nproc is not None else "launch.nproc")
            nproc = min(nproc, len(the_plan.indices))
            if nproc > 1:
                return spawn_local_ranks(rank_argv(request), nproc, forward=("SIGTERM",))
            env = standalone(1)
        return run_rank(request, the_plan, env)
    finally:
        if lock is not None:
            lock.release()


def _device(request: EvalRequest, env):
    name = request.device
    if name is None and torch.cuda.is_available():
        name = f"cuda:{env.local_rank % torch.cuda.device_count()}"
    return device_and_dtype(name, request.dtype)


def run_rank(request: EvalRequest, the_plan: EvalPlan, env) -> int:
    cfg, out = the_plan.cfg, the_plan.out
    setup_logging(cfg.run.log_level, out, env.rank)
    show_progress_bars(cfg.run.progress)
    if env.world_size > 1:
        os.environ.update(env.as_environ())
        dist.init_process_group(
            "gloo",
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=cfg.parallel.timeout_s),
        )
    try:
        if env.rank == 0:
            prepare_dir(out)
        if env.world_size > 1:
            dist.barrier()
        absent = _evaluate_rank(request, the_plan, env)
        if env.world_size > 1:
            dist.barrier()
        if env.rank == 0:
            _write_report(request, the_plan, absent)
        return 0
    finally:
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _settings(the_plan: EvalPlan):
    cfg = the_plan.cfg
    return Settings(
        steps=cfg.eval.sample_steps,
        guidance_scale=cfg.eval.cfg_scale,
        shift=cfg.train.flow.shift,
        seed=cfg.eval.seed,
    )


def _evaluate_rank(request: EvalRequest, the_plan: EvalPlan, env) -> dict[str, str]:
    """Generate and measure this rank's samples; returns the metrics that cannot be computed, and why."""
    cfg, spec, out = the_plan.cfg, the_plan.spec, the_plan.out
    mine = the_plan.indices[env.rank :: env.world_size]
    device, dtype = _device(request, env)
    samples = ShardSamples(the_plan.shards, spec, cfg.model)
    model = load_inference_model(the_plan.source, cfg, ema=request.ema, device=device, dtype=dtype)
    generator = VideoGenerator(model, spec, build_codec(spec, cfg.model, device=str(device)), device)
    context = MetricContext(cfg.eval, device)
    if env.rank == 0:
        for reason in sorted(set(context.absent.values())):
            _log.warning("%s", reason)
        _log.info(
            "evaluating %d held-out samples of %s on %d rank(s): %d steps, guidance %g, metrics %s",
            len(the_plan.indices),
            the_plan.shards,
            env.world_size,
            cfg.eval.sample_steps,
            cfg.eval.cfg_scale,
            ", ".join(cfg.eval.metrics),
        )
    settings = _settings(the_plan)
    metadata = {"checkpoint": str(the_plan.source.path), "step": the_plan.source.step}
    fps = spec.video_fps(cfg.eval.fps)
    bar = StepBar(len(mine) * settings.steps, "eval")
    try:
        for index in mine:
            try:
                sample = samples.read(index)
            except CineSceneError as exc:  # a corrupt sample is skipped and reported, as the loader does
                _log.warning("skipping: %s", exc)
                record_unreadable(out, samples.refs[index].key, exc)
                for _ in range(settings.steps):
                    bar.update()
                continue
            bar.describe(sample.key)
            result = evaluate_into(
                out,
                generator,
                sample,
                settings,
                context,
                cfg.eval.metrics,
                fps=fps,
                metadata=metadata,
                callback=bar.update,
            )
            _log.info(
                "%s: %s",
                sample.key,
                "  ".join(
                    f"{k} {'–' if v is None else f'{v:.4g}'}" for k, v in result.metrics.values.items()
                ),
            )
    finally:
        bar.close()
    return dict(context.absent)


def _write_report(request: EvalRequest, the_plan: EvalPlan, absent: dict[str, str]) -> None:
    out = the_plan.out
    settings = _settings(the_plan)
    header = {
        "cinescene": __version__,
        "checkpoint": str(the_plan.source.path),
        "step": the_plan.source.step,
        "weights": "ema" if request.ema else "trained",
        "data": the_plan.shards,
        "settings": {
            "steps": settings.steps,
            "cfg": settings.guidance_scale,
            "shift": settings.shift,
            "seed": settings.seed,
        },
    }
    label = f"{the_plan.source.path.parent.parent.name} step {the_plan.source.step}"
    data = report.write_report(out, the_plan.keys, the_plan.cfg.eval.metrics, header, absent, label)
    sys.stdout.write((out / "table.md").read_text())
    print(
        f"wrote {out / 'report.html'}, {out / 'metrics.json'}, {out / 'table.md'}, "
        f"{out / 'contact_sheet.png'} and {len(data['samples'])} videos in {out / 'videos'}"
    )
