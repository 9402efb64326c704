"""`cinescene bench ablation SWEEP`: arms of one training config on one budget, evaluated on held-out scenes.

SWEEP is a sweep file whose trials are the arms: the same training config (model, data, steps, seed,
learning rate, EMA) with one switch or another. Two ship: ``configs/experiments/ablation/arms.yaml`` (does
the scene context help? no context, VGGT tokens, pixel context, pixel context with scene anchoring) and
``configs/experiments/ablation/camera.yaml`` (does the camera conditioning work? no camera conditioning,
camera conditioning, with pixel scene context, with scene anchoring, at a scale where SfM registers the
held-out clips). For each arm, in turn:

1. ``cinescene train`` in the trial's run directory, timed (the synthetic training data and the held-out
   data are made first, outside the timing);
2. ``cinescene eval`` of the final checkpoint (its EMA weights when the run kept an EMA) on ``eval.data``:
   clips rendered from another synthetic seed, so every held-out scene is one the model never trained on;
   ``eval.num_samples``, ``eval.sample_steps`` and ``eval.metrics`` of the config;
3. the context attention probe (:mod:`cinescene.eval.attention_probe`) while generating the same held-out
   samples: the softmax mass of video queries on context tokens, against the context's share of the keys.

Beside the arms, the floor of the same held-out clips (:mod:`cinescene.eval.heldout_floor`): their ground
truth scored as a generated video, once per run root.

A finished arm (its final checkpoint and its timing present) is reused unless ``--fresh``; a half-done
table continues where it stopped. Writes ``<run_root>/ablation.json`` (everything), ``<run_root>/table.md``
(the table, with the command, budget, goals, date and commit) and ``<run_root>/report.html`` (the table and
every held-out sample: videos, scene images, camera trajectories), and prints the table
(:mod:`cinescene.eval.ablation_report`).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from cinescene.config import ConfigError
from cinescene.errors import CineSceneError
from cinescene.locks import DirLock, LockBusy
from cinescene.log import get_logger
from cinescene.run_dir import LOCK, RunDir

from .report import format_metric

_log = get_logger("eval.ablation")
TIMING = "ablation_train.json"
EVAL_OUT = "heldout_eval"
FLOOR_DIR = "floor"


def arm_label(model_cfg) -> str:
    """What an arm's model does with the camera and the scene, from its config."""
    scene = model_cfg.scene
    camera = "camera" if model_cfg.camera.enabled else "no camera"
    if not scene.enabled:
        return f"{camera}, no scene context"
    parts = [
        name
        for on, name in ((scene.vggt_tokens, "VGGT tokens"), (scene.pixel_context, "pixel (VAE-proxy)"))
        if on
    ]
    return f"{camera} + " + " + ".join(parts) + (" + anchoring" if scene.pose_embedding else "")


def arm_switches(model_cfg) -> dict:
    """The switches an ablation varies, as ablation.json records them (the goals compare arms by these)."""
    scene = model_cfg.scene
    return {
        "camera": model_cfg.camera.enabled,
        "scene": {
            "enabled": scene.enabled,
            "vggt_tokens": scene.enabled and scene.vggt_tokens,
            "pixel_context": scene.enabled and scene.pixel_context,
            "pose_embedding": scene.enabled and scene.pose_embedding,
        },
    }


@dataclass
class Arm:
    index: int  # the sweep trial's
    label: str
    varied: list[str]  # what makes this arm differ
    overrides: list[str]  # everything `cinescene train` applies to the base config
    cfg: object  # its validated CineSceneConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)


def arms_of(sweep: Path, overrides: Sequence[str], indices: Sequence[int] | None, out: Path | None):
    """(base config, run root, the selected arms); with ``out``, arm i runs in ``out/<i:03d>``."""
    from cinescene.config import load_config
    from cinescene.config.sweep import expand_sweep

    spec, trials = expand_sweep(sweep, overrides)
    chosen = [t for t in trials if indices is None or t.index in indices]
    if indices is not None and len(chosen) != len(set(indices)):
        asked = ",".join(map(str, indices))
        raise ConfigError("--arms", f"the sweep has arms 0..{len(trials) - 1}, got {asked}")
    base = (sweep.parent / spec.base).resolve()
    arms = []
    for trial in chosen:
        applied, cfg = list(trial.overrides), trial.config
        if out is not None:
            applied.append(f"run.dir={out / f'{trial.index:03d}'}")
            cfg, _ = load_config(base, applied)
        arms.append(Arm(trial.index, arm_label(cfg.model), list(trial.varied), applied, cfg))
    return base, (out or Path(spec.run_root)), arms


def _python() -> list[str]:
    return [sys.executable, "-m", "cinescene"]


def _run(argv: Sequence[str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(list(argv), stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
        raise CineSceneError(
            f"{what} failed (exit status {done.returncode}; {log}): {tail[0] if tail else ''}"
        )


def ensure_heldout(cfg, clips: int, seed: int) -> Path:
    """``eval.data`` of synthetic configs: ``clips`` clips of synthetic seed ``seed`` (another seed than the
    training data's, so other scenes), rendered and prepared once; other data must already be there."""
    from cinescene.data.prepare import prepare
    from cinescene.data.synth import synthesize

    shards = Path(cfg.eval.data)
    if (shards / "manifest.json").is_file():
        return shards
    synth = cfg.data.synth
    if not cfg.data.generate:
        raise CineSceneError(f"eval.data={shards} holds no manifest.json: prepare the held-out shards there")
    if seed == synth.seed:
        raise CineSceneError(
            f"--heldout-seed {seed} is the training data's data.synth.seed: the held-out scenes "
            "would be training scenes"
        )
    clip_dir = Path(str(shards) + "_clips")
    synthesize(
        clip_dir,
        clips=clips,
        frames=synth.frames,
        size=tuple(synth.size),
        scene_images=synth.scene_images,
        seed=seed,
        show_progress=False,
        scenes=synth.scenes,
        camera_moves=synth.camera_moves,
    )
    prepare(clip_dir, shards, encoder="none", rank=0, world=1, show_progress=False)
    return shards


def train(arm: Arm, base: Path, nproc: int | None, fresh: bool) -> dict:
    """Train one arm (or reuse a finished run); returns its timing record."""
    from cinescene.ckpt.locate import checkpoints_dir, latest_step_dir
    from cinescene.ckpt.record import read_record

    timing_path = arm.run_dir / TIMING
    if fresh and arm.run_dir.exists():
        shutil.rmtree(arm.run_dir)
    finished = None
    latest = latest_step_dir(checkpoints_dir(arm.cfg)) if timing_path.is_file() else None
    if latest is not None:
        try:
            finished = read_record(latest)
        except CineSceneError as exc:  # a damaged run is measured again from scratch
            _log.warning("%s: %s; training it again", arm.label, exc)
    if finished is not None:
        if finished.step >= arm.cfg.train.max_steps:
            _log.info("%s: reusing the finished run in %s (--fresh retrains)", arm.label, arm.run_dir)
            return json.loads(timing_path.read_text())
    if arm.run_dir.exists():
        shutil.rmtree(arm.run_dir)  # a run of another budget, or one that stopped: measure from scratch
    argv = _python() + ["train", str(base), *arm.overrides]
    if nproc is not None:
        argv += ["--nproc", str(nproc)]
    started, cpu = time.perf_counter(), _children_cpu_s()
    _run(argv, arm.run_dir.parent / f"{arm.run_dir.name}.train.log", f"training {arm.label}")
    timing = {
        "wall_s": round(time.perf_counter() - started, 1),
        # CPU seconds of the training processes: what the arm costs even when other jobs share the cores
        "cpu_s": round(_children_cpu_s() - cpu, 1),
        "command": shlex.join(argv),
        "nproc": nproc or arm.cfg.launch.nproc,
    }
    timing_path.write_text(json.dumps(timing, indent=1) + "\n")
    return timing


def _children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished child processes (and theirs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def final_loss(run_dir: Path) -> float | None:
    """Mean training loss over the last tenth of the logged steps."""
    losses = [
        row["loss"] for row in RunDir(run_dir).metrics.rows() if isinstance(row.get("loss"), (int, float))
    ]
    tail = losses[-max(1, len(losses) // 10) :]
    return sum(tail) / len(tail) if tail else None


def evaluate(arm: Arm, nproc: int | None) -> dict:
    """`cinescene eval` of the arm's final checkpoint on the held-out data; returns its metrics.json."""
    from cinescene.ckpt.locate import checkpoints_dir

    out = arm.run_dir / EVAL_OUT
    argv = _python() + [
        "eval",
        str(checkpoints_dir(arm.cfg)),
        "--out",
        str(out),
        "--nproc",
        str(nproc or arm.cfg.launch.nproc),
    ]
    if arm.cfg.train.ema.enabled:
        argv.append("--ema")
    _run(argv, arm.run_dir.parent / f"{arm.run_dir.name}.eval.log", f"evaluating {arm.label}")
    return json.loads((out / "metrics.json").read_text())


def attention(arm: Arm) -> dict | None:
    """The context attention probe while generating the held-out samples (None without scene context)."""
    if not arm.cfg.model.scene.enabled:
        return None
    from cinescene.ckpt.locate import checkpoints_dir, resolve_checkpoint
    from cinescene.sampling.checkpoint import load_inference_model
    from cinescene.sampling.codec import build_codec
    from cinescene.sampling.pipeline import Settings, VideoGenerator
    from cinescene.sampling.spec import training_spec

    from .attention_probe import context_attention
    from .heldout import choose

    cfg = arm.cfg
    spec = training_spec(cfg)
    chosen = choose(cfg, spec)
    model = load_inference_model(resolve_checkpoint(checkpoints_dir(cfg)), cfg, ema=cfg.train.ema.enabled)
    generator = VideoGenerator(model, spec, build_codec(spec, cfg.model), "cpu")
    settings = Settings(
        steps=cfg.eval.sample_steps,
        guidance_scale=cfg.eval.cfg_scale,
        shift=cfg.train.flow.shift,
        seed=cfg.eval.seed,
    )
    with context_attention(layers=cfg.model.num_layers) as probe:
        for index in chosen.indices:
            sample = chosen.samples.read(index)
            generator.latents(
                sample.text,
                sample.cameras,
                sample.scene,
                settings,
                key=sample.key,
                scene_cameras=sample.scene_cameras,
            )
    return {"mass": probe.mean, "uniform": probe.uniform, "per_layer": probe.per_layer()}


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def floors(cfg, root: Path, fresh: bool) -> list[dict]:
    """The floors of the held-out clips (:mod:`.heldout_floor`) in ``root/floor/<kind>``, each reused while
    it was measured with the same ``eval`` settings (``--fresh`` measures again)."""
    from dataclasses import asdict

    from cinescene.sampling.spec import training_spec

    from .heldout_floor import KINDS, evaluate_floor, floor_kinds

    rows = []
    for kind in floor_kinds(training_spec(cfg)):
        out = root / FLOOR_DIR / kind
        settings = json.loads(json.dumps(asdict(cfg.eval)))
        done = out / "ablation_floor.json"
        report = None if fresh else _reusable_floor(out, done, settings)
        if report is not None:
            _log.info("floor (%s): reusing %s (--fresh measures again)", KINDS[kind], out)
        else:
            done.unlink(missing_ok=True)
            _log.info("floor (%s): scoring the held-out ground truth as a generated video", KINDS[kind])
            report = evaluate_floor(cfg, out, kind)
            done.write_text(json.dumps(settings) + "\n")
        rows.append({"kind": kind, "label": KINDS[kind], "eval": _summary(report, out)})
    return rows


def _reusable_floor(out: Path, done: Path, settings: dict) -> dict | None:
    """The floor's metrics.json if it was measured with ``settings`` and is intact; None: measure again."""
    try:
        if json.loads(done.read_text()) != settings:
            return None
        report = json.loads((out / "metrics.json").read_text())
        _summary(report, out)
        return report
    except (OSError, ValueError, KeyError, TypeError):  # absent, cut short or edited: measured again
        return None


def _summary(report: dict, directory: Path) -> dict:
    """What ablation.json keeps of an evaluation's metrics.json."""
    kept = {k: report[k] for k in ("mean", "count", "sfm_failures", "sfm_attempts", "settings")}
    kept["per_sample"] = {r["key"]: r["metrics"] for r in report["samples"]}
    kept["dir"] = str(directory)
    return kept


def run(
    sweep: Path,
    overrides: Sequence[str],
    *,
    arms: Sequence[int] | None,
    heldout_clips: int,
    heldout_seed: int,
    nproc: int | None,
    fresh: bool,
    command: str,
    out: Path | None = None,
) -> dict:
    base, root, selected = arms_of(sweep, overrides, arms, out)
    lock = _hold_root(root)  # one ablation per run root: its floors and tables are shared
    try:
        return _run_locked(base, root, selected, sweep, heldout_clips, heldout_seed, nproc, fresh, command)
    finally:
        lock.release()


def _hold_root(root: Path) -> DirLock:
    """Hold the run root's lock (:class:`cinescene.locks.DirLock`); one line if another ablation holds it."""
    try:
        return DirLock(
            root,
            LOCK,
            lambda holder: (
                f"run root {root} is in use by another run ({holder}); one ablation per run root: wait for it"
            ),
        ).acquire()
    except LockBusy as exc:
        raise CineSceneError(str(exc)) from None


def _run_locked(base, root, selected, sweep, heldout_clips, heldout_seed, nproc, fresh, command) -> dict:
    from cinescene.data.ensure import ensure_dataset
    from cinescene.distributed.batching import plan_batch

    from . import ablation_report

    first = selected[0].cfg
    ensure_dataset(first.data)  # before any timing: rendering is not training
    ensure_heldout(first, heldout_clips, heldout_seed)
    floor_rows = floors(first, root, fresh)
    rows = []
    for arm in selected:
        _log.info("arm %d: %s (%s)", arm.index, arm.label, " ".join(arm.varied) or "base config")
        timing = train(arm, base, nproc, fresh)
        report = evaluate(arm, nproc)
        probe = attention(arm)
        rows.append(
            {
                "index": arm.index,
                "label": arm.label,
                **arm_switches(arm.cfg.model),
                "overrides": arm.varied,
                "steps": arm.cfg.train.max_steps,
                "train": timing,
                "final_loss": final_loss(arm.run_dir),
                "eval": _summary(report, arm.run_dir / EVAL_OUT),
                "attention": probe,
            }
        )
        mean = report["mean"]
        _log.info(
            "arm %d: %s trained in %.1f min, final loss %s; held-out %s; SfM registered %d of %d; context "
            "attention %s",
            arm.index,
            arm.label,
            timing["wall_s"] / 60,
            "–" if rows[-1]["final_loss"] is None else f"{rows[-1]['final_loss']:.4f}",
            "  ".join(f"{k} {format_metric(v, k)}" for k, v in mean.items()),
            report["sfm_attempts"] - report["sfm_failures"],
            report["sfm_attempts"],
            "–" if probe is None else f"{probe['mass']:.3f} of a uniform {probe['uniform']:.3f}",
        )
    ranks = nproc or first.launch.nproc
    synth = first.data.synth
    results = {
        "name": Path(sweep).stem,
        "command": command,
        "date": date.today().isoformat(),
        "commit": _commit(),
        "device": f"CPU ({os.cpu_count()} cores, {platform.machine()})",
        "metrics": list(first.eval.metrics),
        "budget": {
            "steps": first.train.max_steps,
            "global_batch": plan_batch(first.train, ranks, first.parallel.sequence).global_batch_size,
            "lr": first.train.lr,
            "seed": first.run.seed,
            "train_clips": synth.clips,
            "nproc": ranks,
            "model": f"{first.model.name} (dim {first.model.dim}, {first.model.num_layers} layers, patch "
            f"{'x'.join(map(str, first.model.patch_size))})",
            "data": f"{synth.frames} frames at {synth.size[0]}x{synth.size[1]}, pixel pool "
            f"{first.data.pixel_pool}, {first.data.scene_images} scene images, scenes "
            f"{', '.join(synth.scenes)}, camera moves {', '.join(synth.camera_moves)}",
            "heldout": first.eval.data,
            "heldout_samples": rows[0]["eval"]["settings"]["num_samples"],
            "sample_steps": first.eval.sample_steps,
            "cfg_scale": first.eval.cfg_scale,
            "ema": first.train.ema.enabled,
        },
        "arms": rows,
        "floors": floor_rows,
        "goals": ablation_report.goals(rows),
    }
    (root / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    (root / "table.md").write_text(ablation_report.table(results))
    ablation_report.write_html(root, results)
    return results


__all__ = ["arm_label", "arm_switches", "arms_of", "floors", "run"]
