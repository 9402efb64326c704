"""`cinescene data synth`: render N synthetic scene-decoupled clips, in parallel, deterministically.

Clip ``i`` of seed ``K`` draws everything from ``SeedSequence([K, i])``, so
the output does not depend on ``--workers`` or on which clips were already
there: a run that stops part-way resumes by rendering only the missing
clips, and two runs with the same arguments are byte-identical.

Speed (numpy on one core, 17 frames of 64x64 with 6 scene images and a
128x256 panorama; BENCHMARKS.md, "Data"): about 11 clips/s rendering alone
(0.09 CPU-seconds per clip). ``cinescene data synth`` of the CPU smoke run's
32 clips takes ~3.4 s on one core, start-up and writes included, ~2.1 s with
two workers. ``clips_per_second`` is the benchmark (BENCHMARKS.md gives the
command); no test asserts a speed.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cinescene.config import ConfigError
from cinescene.config.data import CAMERA_MOVES, SCENE_KINDS, SynthDataConfig
from cinescene.config.paths import check_output_location
from cinescene.errors import CineSceneError
from cinescene.log import get_logger, progress

from ..clips import Clip, dump_json, write_clip
from ..geometry import intrinsics
from ..scene_decoupled import export_clip, exported
from .render import render_clip
from .scenes import build_scene
from .subjects import PHRASES, build_subject
from .trajectories import build_trajectory

GENERATOR = "cinescene-synth/1"
FPS = 16.0
INDEX_FILE = "synth.json"
LAYOUTS = ("clips", "scene-decoupled")
log = get_logger("data.synth")


def clip_id(index: int) -> str:
    return f"clip_{index:06d}"


def render_synthetic_clip(
    index: int,
    seed: int,
    frames: int,
    size: Sequence[int],
    scene_images: int,
    scenes: Sequence[str] = SCENE_KINDS,
    camera_moves: Sequence[str] = CAMERA_MOVES,
) -> Clip:
    """Render clip ``index`` of ``seed`` (pure function of its arguments), its scene of one of ``scenes``, its
    camera move one of ``camera_moves`` (each drawn with equal chances)."""
    height, width = int(size[0]), int(size[1])
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    scene = build_scene(rng, scenes)
    times = np.arange(frames) / FPS
    subject = build_subject(
        rng, scene.materials, times, scene.free_center, 0.5 * scene.free_radius, outdoors=scene.kind != "room"
    )
    kind = str(rng.choice([m for m in CAMERA_MOVES if m in camera_moves]))  # the set matters, not its order
    hfov = np.radians(rng.uniform(50.0, 75.0))
    K = intrinsics(height, width, hfov)
    trajectory = build_trajectory(
        rng,
        kind,
        frames,
        subject.look_points(),
        subject.roots,
        scene.free_center,
        scene.free_radius,
        scene.camera_z,
    )
    rendered = render_clip(rng, scene, subject, trajectory.c2w, K, height, width, scene_images)
    description = subject.description[0].upper() + subject.description[1:]
    prompt = (
        f"{description} {PHRASES[subject.motion]} in {scene.description}. The camera {trajectory.phrase}."
    )
    meta = {
        "generator": GENERATOR,
        "seed": int(seed),
        "index": int(index),
        "scene": {"kind": scene.kind, "description": scene.description},
        "subject": {
            "kind": subject.kind,
            "motion": subject.motion,
            "description": subject.description,
            "height_m": round(float(subject.height), 4),
            # Head centre per frame (world, metres): a point the renderer draws, for checks.
            "head_track": subject.head_centers().tolist(),
        },
        "trajectory": {
            "kind": trajectory.kind,
            "phrase": trajectory.phrase,
            "max_rotation_deg": round(trajectory.max_rotation_deg, 3),
            "hfov_deg": round(float(np.degrees(hfov)), 4),
        },
    }
    return Clip(
        clip_id(index),
        rendered.video,
        trajectory.c2w,
        np.repeat(K[None], frames, 0),
        rendered.panorama,
        scene.pano_center,
        rendered.scene_images,
        rendered.scene_c2w,
        rendered.scene_K,
        prompt,
        FPS,
        meta,
        video_bg=rendered.video_bg,
        mask=rendered.mask,
    )


def validate_args(
    clips: int,
    frames: int,
    size: Sequence[int],
    scene_images: int,
    workers: int,
    seed: int = 0,
    scenes: Sequence[str] = SCENE_KINDS,
    camera_moves: Sequence[str] = CAMERA_MOVES,
) -> None:
    """The checks of ``data.synth`` (SynthDataConfig), as ConfigErrors naming the option (the CLI exits 2)."""
    settings = SynthDataConfig(
        clips=clips,
        frames=frames,
        size=list(size),
        scene_images=scene_images,
        workers=workers,
        seed=seed,
        scenes=list(scenes),
        camera_moves=list(camera_moves),
    )
    try:
        settings.validate()
    except ConfigError as exc:
        raise ConfigError("--" + exc.key.replace("_", "-"), exc.message) from None


def _render_and_write(job) -> str:
    index, seed, frames, size, scene_images, scenes, camera_moves, out, layout = job
    clip = render_synthetic_clip(index, seed, frames, size, scene_images, scenes, camera_moves)
    if layout == "scene-decoupled":
        export_clip(clip, Path(out))
    else:
        write_clip(clip, Path(out))
    return clip.clip_id


def _done(out: Path, index: int, layout: str) -> bool:
    if layout == "scene-decoupled":
        return exported(out, clip_id(index))
    return (out / clip_id(index) / "meta.json").is_file()


def synthesize(
    out: str | os.PathLike,
    clips: int,
    frames: int = 17,
    size: Sequence[int] = (64, 64),
    scene_images: int = 6,
    seed: int = 0,
    workers: int = 1,
    layout: str = "clips",
    show_progress: bool = True,
    scenes: Sequence[str] = SCENE_KINDS,
    camera_moves: Sequence[str] = CAMERA_MOVES,
) -> Path:
    """Render ``clips`` clips into ``out`` (resumes: existing complete clips are kept). Returns ``out``."""
    validate_args(clips, frames, size, scene_images, workers, seed, scenes, camera_moves)
    if layout not in LAYOUTS:
        raise ConfigError("--layout", f"expected one of {list(LAYOUTS)}, got {layout!r}")
    check_output_location(out, "--out")
    out = Path(out)
    settings = {
        "generator": GENERATOR,
        "frames": frames,
        "size": [int(s) for s in size],
        "scene_images": scene_images,
        "seed": seed,
        "layout": layout,
    }
    # Recorded only when restricted, so clips rendered before these settings existed still resume.
    if tuple(sorted(scenes)) != SCENE_KINDS:
        settings["scenes"] = sorted(scenes)
    if set(camera_moves) != set(CAMERA_MOVES):
        settings["camera_moves"] = [m for m in CAMERA_MOVES if m in camera_moves]
    index_path = out / INDEX_FILE
    if index_path.exists():
        previous = _read_index(index_path)
        if previous.get("settings") != settings:
            raise CineSceneError(
                f"{out} holds clips rendered with other settings ({previous.get('settings')}); "
                "use another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    existing = _index_clips(index_path)
    # Settings first, so an interrupted run cannot be resumed with other settings; clips at the end.
    dump_json({"settings": settings, "clips": existing}, index_path)
    todo = [i for i in range(clips) if not _done(out, i, layout)]
    jobs = [
        (i, seed, frames, tuple(size), scene_images, tuple(scenes), tuple(camera_moves), str(out), layout)
        for i in todo
    ]
    # Rendering is CPU-bound: more processes than cores only cost memory (100000 would exhaust it).
    workers = min(workers, len(os.sched_getaffinity(0)))
    log.info(
        "rendering %d of %d clips (%dx%dx%d, %d scene images) into %s with %d worker(s)",
        len(jobs),
        clips,
        frames,
        size[0],
        size[1],
        scene_images,
        out,
        workers,
    )
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: ensure_dataset may run inside a trainer whose threads (torch, gloo) a fork
        # would copy mid-flight. Every clip seeds its own generator, so completion order is irrelevant.
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for _ in progress(
                pool.imap_unordered(_render_and_write, jobs),
                enabled=show_progress,
                total=len(jobs),
                desc="synth",
                unit="clip",
            ):
                pass
    else:
        for job in progress(jobs, enabled=show_progress, desc="synth", unit="clip"):
            _render_and_write(job)
    dump_json(
        {"settings": settings, "clips": sorted(set(existing) | {clip_id(i) for i in range(clips)})},
        index_path,
    )
    return out


def _read_index(index_path: Path) -> dict:
    """``synth.json`` as written by us: settings and the clip names; anything else is one line naming it."""
    from ..manifest import read_json_file

    index = read_json_file(index_path)
    clips = index.get("clips", []) if isinstance(index, dict) else None
    if not (
        isinstance(index, dict)
        and isinstance(index.get("settings"), dict)
        and isinstance(clips, list)
        and all(isinstance(c, str) for c in clips)
    ):
        raise CineSceneError(
            f"{index_path}: not the index `cinescene data synth` writes (settings and clip "
            "names); remove it, or use another --out"
        )
    return index


def _index_clips(index_path: Path) -> list:
    if not index_path.exists():
        return []
    return list(_read_index(index_path)["clips"])


def clips_per_second(
    frames: int = 17, size: Sequence[int] = (64, 64), scene_images: int = 6, count: int = 4
) -> float:
    """Rendering speed on this core (no disk writes): clips per second over ``count`` clips."""
    start = time.perf_counter()
    for i in range(count):
        render_synthetic_clip(i, 0, frames, size, scene_images)
    return count / (time.perf_counter() - start)
