"""The eval hook: held-out videos and the paper's metrics while a run trains.

Every ``eval.every_steps`` optimizer steps and after the last one, the
:class:`EvalHook` generates ``eval.num_samples`` held-out samples of
``eval.data`` (a fixed set drawn by ``eval.seed``: the same samples, the same
noise, at every call and at any world size) with ``eval.sample_steps`` steps
and guidance ``eval.cfg_scale``, with the EMA weights when the run keeps an
EMA, and measures ``eval.metrics``. It is the same code as `cinescene eval`
(:func:`cinescene.eval.heldout.choose`, :func:`cinescene.eval.evaluate.evaluate_into`,
:func:`cinescene.eval.report.write_report`) running on the live model.

Ranks. Every rank takes part: the model is the engine's own module, so under
ZeRO-3 each forward gathers its parameters exactly as a training forward
does. Samples are split across data-parallel ranks (rank r takes r, r + D,
...); sequence-parallel peers generate the same sample together and the
first of them writes it. Every rank runs the same number of sampling calls
(a rank without a sample of its own, or whose sample is unreadable,
generates a blank placeholder and throws it away), so the collectives inside
the forwards stay in step. After every sampling step the ranks agree on the
preemption flag: a SIGUSR1/SIGTERM during an evaluation abandons it within
one sampling step, and the preemption callback after this one saves at this
step boundary.

Outputs. Each rank writes its samples' records (and, with
``eval.log_videos``, their mp4s, side-by-side mp4s and contact-sheet blocks)
into ``<run.dir>/eval/step_XXXXXXXX/``, the layout of ``cinescene eval
--out``, and the ground-truth videos and scene images into
``<run.dir>/eval/`` (shared by the steps); after a barrier rank 0 gathers
them into ``metrics.json``, ``table.md``, ``report.html`` and
``contact_sheet.png`` and adds ``eval/<metric>`` (the mean over the samples
that have a value), ``eval/seconds`` (this call) and ``eval/time_share``
(evaluation's share of the wall time since training started in this
process) to the step's metrics row, which is logged off the
``tracking.log_every_steps`` cadence too. With ``eval.log_videos`` and W&B
on, the W&B run gets a table of (key, prompt, ground truth, generated)
videos, per sample the generated video beside the ground truth and the
requested vs recovered camera trajectory (:meth:`EvalHook._media`), and the
contact sheet.

Training never notices: the global RNG states (Python, NumPy, torch, CUDA),
every module's train/eval mode and the trained weights (when the EMA was
swapped in) are put back exactly, nothing reads the training data, and the
sampler's noise comes from its own generators; a run with the hook and one
without end with bit-identical weights (tests/train/test_eval_hook.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cinescene import __version__, rng
from cinescene.ckpt.layout import step_dir_name
from cinescene.config.schema import CineSceneConfig
from cinescene.errors import CineSceneError
from cinescene.eval.evaluate import evaluate_into, prepare_dir, record_unreadable
from cinescene.eval.heldout import choose
from cinescene.eval.metrics import MetricContext
from cinescene.eval.report import number, write_report
from cinescene.log import get_logger
from cinescene.sampling.codec import build_codec
from cinescene.sampling.pipeline import Settings, VideoGenerator
from cinescene.sampling.spec import training_spec

from .callbacks import Callback, StepResult, TrainState
from .ema import EMACallback, ShardedEMA
from .preemption import PreemptionFlag

_log = get_logger("train.eval")
EVAL_DIR = "eval"
PREFIX = "eval/"


class _Preempted(Exception):
    """Raised between two sampling steps when the ranks agree on a preemption request."""


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def untouched(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every RNG state and every module's mode restored after it."""
    states = rng.capture()
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        rng.restore(states)


class EvalHook(Callback):
    name = "eval"

    def __init__(
        self,
        cfg: CineSceneConfig,
        *,
        engine,
        layout,
        tracker,
        flag: PreemptionFlag,
        ema: ShardedEMA | None = None,
    ):
        model, device = engine.module, engine.device
        self.cfg, self.engine, self.model, self.device, self.layout = cfg, engine, model, device, layout
        self.tracker, self.flag, self.ema = tracker, flag, ema
        self.every = cfg.eval.every_steps
        self.root = Path(cfg.run.dir) / EVAL_DIR
        # Everything a user can get wrong about the held-out data fails here, in one line, before step 1.
        self.spec = training_spec(cfg)
        self.chosen = choose(cfg, self.spec)
        self.generator = VideoGenerator(
            model, self.spec, build_codec(self.spec, cfg.model, device=str(device)), device
        )
        self.context = MetricContext(cfg.eval, device)
        self.settings = Settings(
            steps=cfg.eval.sample_steps,
            guidance_scale=cfg.eval.cfg_scale,
            shift=cfg.train.flow.shift,
            seed=cfg.eval.seed,
        )
        self.fps = self.spec.video_fps(cfg.eval.fps)
        self.started: float | None = None
        self.spent_s = 0.0
        if layout.is_main:
            for reason in sorted(set(self.context.absent.values())):
                _log.warning("eval: %s", reason)
            _log.info(
                "eval every %d steps and after the last: %d held-out samples of %s (%s), %d sampling steps, "
                "guidance %g, %s weights, metrics %s",
                self.every,
                len(self.chosen.keys),
                cfg.eval.data,
                ", ".join(self.chosen.keys),
                self.settings.steps,
                self.settings.guidance_scale,
                "EMA" if ema is not None else "trained",
                ", ".join(cfg.eval.metrics),
            )

    # ------------------------------------------------------------------ events
    def on_train_start(self, state: TrainState) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        due = result.step % self.every == 0 or result.step >= state.max_steps
        if due and not (state.stop or state.fatal):
            self.evaluate(state, result.step)

    # -------------------------------------------------------------- evaluation
    def evaluate(self, state: TrainState, step: int) -> None:
        started = time.perf_counter()
        out = self.root / step_dir_name(step)
        if self.layout.is_main:
            prepare_dir(out)
        _barrier()
        self._release_gathered()
        with untouched(self.model), self.ema.applied() if self.ema is not None else nullcontext():
            try:
                finished = self._generate(out, step)
            finally:
                self._release_gathered()
        _barrier()
        seconds = time.perf_counter() - started
        self.spent_s += seconds
        share = self.spent_s / max(time.perf_counter() - (self.started or started), 1e-9)
        state.metrics.update({f"{PREFIX}seconds": seconds, f"{PREFIX}time_share": share})
        state.request_log()
        if not finished:
            if self.layout.is_main:
                _log.warning("eval at step %d abandoned after %.1f s: preemption requested", step, seconds)
            return
        if not self.layout.is_main:
            return

        data = self._report(out, step)
        means = {name: number(data["mean"][name]) for name in self.cfg.eval.metrics}
        state.metrics.update({f"{PREFIX}{name}": value for name, value in means.items()})
        if self.cfg.eval.log_videos and self.tracker.logs_media:
            self.tracker.log_media(step, self._media(out, data))
        _log.info(
            "eval at step %d: %d held-out samples in %.1f s (%.1f%% of the wall time so far): %s -> %s",
            step,
            len(data["samples"]),
            seconds,
            100 * share,
            "  ".join(f"{k} {'–' if v is None else f'{v:.4g}'}" for k, v in means.items()),
            out,
        )

    def _generate(self, out: Path, step: int) -> bool:
        """This rank's share of the samples (module doc); False when a preemption request stopped it."""
        try:
            self._generate_rounds(out, step)
        except _Preempted:
            return False
        return True

    def _check_preemption(self, *_args) -> None:
        """After every sampling step (a collective; every rank runs the same steps): stop when any rank was
        signalled, between two forwards, so the save waits for one step at most."""
        if self.flag.agreed(self.device):
            raise _Preempted

    def _generate_rounds(self, out: Path, step: int) -> None:
        dp_rank, dp_size = self.layout.dp_rank, self.layout.dp_size
        writer = self.layout.sp_rank == 0
        indices, samples = self.chosen.indices, self.chosen.samples
        metadata = {
            "run": str(self.cfg.run.dir),
            "step": step,
            "weights": "ema" if self.ema is not None else "trained",
        }
        for round_ in range(math.ceil(len(indices) / dp_size)):
            position = round_ * dp_size + dp_rank
            sample = None
            if position < len(indices):
                try:
                    sample = samples.read(indices[position])
                except CineSceneError as exc:  # reported in metrics.json, left out of the means
                    _log.warning("eval: skipping %s", exc)
                    if writer:
                        record_unreadable(out, samples.refs[indices[position]].key, exc)
            if sample is None:
                self._placeholder()
            elif writer:
                evaluate_into(
                    out,
                    self.generator,
                    sample,
                    self.settings,
                    self.context,
                    self.cfg.eval.metrics,
                    fps=self.fps,
                    metadata=metadata,
                    media=self.cfg.eval.log_videos,
                    references=self.root,
                    callback=self._check_preemption,
                )
            else:
                self.generator.latents(
                    sample.text,
                    sample.cameras,
                    sample.scene,
                    self.settings,
                    key=sample.key,
                    scene_cameras=sample.scene_cameras,
                    callback=self._check_preemption,
                )

    def _release_gathered(self) -> None:
        """Under ZeRO-3, partition every parameter, then gather the persistent ones again.

        At the end of a forward ZeRO-3 prefetches the parameters the next forward starts with, so after
        the evaluation's forwards some parameters stay gathered with the values the evaluation used (the
        EMA's), and the next training forward would use them; before the evaluation, a gathered leftover
        of training would ignore the EMA. Persistent parameters (``ds_persist``) are gathered again, as
        DeepSpeed does after loading a checkpoint. ZeRO-1/2 hold whole parameters: nothing to do."""
        if not hasattr(getattr(self.engine, "optimizer", None), "empty_partition_cache"):
            return
        self.engine.empty_partition_cache()
        persistent = [p for p in self.model.parameters() if getattr(p, "ds_persist", False)]
        if persistent:
            persistent[0].all_gather(persistent)

    def _placeholder(self) -> None:
        """A blank sample's sampling call: the same forwards as a real one, so every rank stays in step."""
        spec, model_cfg = self.spec, self.cfg.model
        eye = np.eye(4, dtype=np.float32)
        scene = np.zeros((spec.scene_images, *spec.scene_size, 3), np.uint8)
        self.generator.latents(
            np.zeros((model_cfg.text_len, model_cfg.text_dim), np.float32),
            np.repeat(eye[None], spec.latent_frames, 0),
            scene,
            self.settings,
            key="placeholder",
            scene_cameras=np.repeat(eye[None], len(scene), 0),
            callback=self._check_preemption,
        )

    # ----------------------------------------------------------------- rank 0
    def _report(self, out: Path, step: int) -> dict:
        settings = self.settings
        header = {
            "cinescene": __version__,
            "checkpoint": f"{self.cfg.run.dir} (training)",
            "step": step,
            "weights": "ema" if self.ema is not None else "trained",
            "data": self.cfg.eval.data,
            "settings": {
                "steps": settings.steps,
                "cfg": settings.guidance_scale,
                "shift": settings.shift,
                "seed": settings.seed,
            },
        }
        return write_report(
            out,
            self.chosen.keys,
            self.cfg.eval.metrics,
            header,
            self.context.absent,
            f"{self.cfg.run.name} step {step}",
        )

    def _media(self, out: Path, data: dict) -> dict[str, object]:
        """W&B: a table of (key, prompt, ground truth, generated); per sample, under its key, the generated
        video beside the ground truth (``eval/side_by_side/<key>``) and the requested vs recovered camera
        trajectory in top and side view (``eval/trajectory/<key>``, HTML holding the SVG); the contact sheet.
        Per-sample keys give each sample a media panel whose step slider runs through the evaluations."""
        import wandb

        from cinescene.eval.trajectory_plot import sample_trajectory_svg

        def video(record: dict, field: str):
            return wandb.Video(str(out / record[field])) if record.get(field) else None

        rows = [[r["key"], r["prompt"], video(r, "ground_truth"), video(r, "video")] for r in data["samples"]]
        media: dict[str, object] = {
            f"{PREFIX}videos": wandb.Table(columns=["key", "prompt", "ground truth", "generated"], data=rows)
        }
        for record in data["samples"]:
            pair = video(record, "side_by_side")
            if pair is not None:
                media[f"{PREFIX}side_by_side/{record['key']}"] = pair
            figure = sample_trajectory_svg({"recovered": record})
            if figure is not None:
                media[f"{PREFIX}trajectory/{record['key']}"] = wandb.Html(
                    figure, inject=False, data_is_not_path=True
                )
        if (out / "contact_sheet.png").is_file():
            media[f"{PREFIX}contact_sheet"] = wandb.Image(str(out / "contact_sheet.png"))
        return media


def eval_callbacks(
    cfg: CineSceneConfig, engine, layout, tracker, flag: PreemptionFlag, callbacks: list[Callback]
) -> list[Callback]:
    """``[EvalHook]`` when ``eval.every_steps`` is on (sampling with the EMA of ``callbacks``' EMA callback,
    if any), else ``[]``. It goes after the EMA and before the preemption callback, so a preemption
    request that abandons an evaluation is saved at the same step boundary."""
    if not cfg.eval.every_steps:
        return []
    ema = next((c.ema for c in callbacks if isinstance(c, EMACallback)), None)
    return [EvalHook(cfg, engine=engine, layout=layout, tracker=tracker, flag=flag, ema=ema)]
