"""The clip directory: what `data synth` and `data convert` write and `data prepare` reads.

One directory per clip (``DIR/<clip_id>/``)::

    video.npy       uint8 (F, H, W, 3)  frames with the subject
    video_bg.npy    uint8 (F, H, W, 3)  the same camera path without the subject (optional)
    mask.npy        uint8 (F, H, W)     1 where the subject is visible (optional)
    panorama.png    equirectangular static scene (convention: cinescene.data.geometry)
    scene_00.png .. scene_<S-1>.png     perspective views cut from the panorama
    cameras.json    per-frame OpenCV camera-to-world (metres) and intrinsics, the scene
                    images' poses, the panorama centre, fps
    prompt.txt      one line naming subject, motion and scene
    meta.json       provenance (generator or source, seed, subject, motion, trajectory ...)

Formats are chosen to be byte-deterministic: ``.npy`` (fixed header, raw
bytes; never ``.npz``, whose zip entries carry timestamps), PNG written by PIL
without metadata, JSON with sorted keys. A clip is written to a hidden
temporary directory and renamed into place, so a directory that exists is
complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cinescene.config.paths import kind_problem
from cinescene.errors import CineSceneError

from .geometry import pose_problem

CAMERAS_FILE = "cameras.json"
CONVENTION = "opencv camera-to-world; world right-handed z-up; metres"


@dataclass
class Clip:
    clip_id: str
    video: np.ndarray
    c2w: np.ndarray  # (F, 4, 4)
    K: np.ndarray  # (F, 3, 3)
    panorama: np.ndarray
    pano_center: np.ndarray  # (3,)
    scene_images: np.ndarray  # (S, Hs, Ws, 3)
    scene_c2w: np.ndarray  # (S, 4, 4)
    scene_K: np.ndarray  # (S, 3, 3)
    prompt: str
    fps: float
    meta: dict = field(default_factory=dict)
    video_bg: np.ndarray | None = None
    mask: np.ndarray | None = None


def dump_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n")


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def write_clip(clip: Clip, root: Path) -> Path:
    """Write ``root/<clip_id>/`` atomically; returns its path."""
    final = root / clip.clip_id
    tmp = root / f".tmp-{clip.clip_id}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "video.npy", np.ascontiguousarray(clip.video, dtype=np.uint8))
    if clip.video_bg is not None:
        np.save(tmp / "video_bg.npy", np.ascontiguousarray(clip.video_bg, dtype=np.uint8))
    if clip.mask is not None:
        np.save(tmp / "mask.npy", np.ascontiguousarray(clip.mask, dtype=np.uint8))
    save_png(clip.panorama, tmp / "panorama.png")
    scene_entries = []
    for k, (image, c2w, K) in enumerate(zip(clip.scene_images, clip.scene_c2w, clip.scene_K)):
        name = f"scene_{k:02d}.png"
        save_png(image, tmp / name)
        scene_entries.append({"file": name, "c2w": c2w.tolist(), "K": K.tolist()})
    cameras = {
        "convention": CONVENTION,
        "fps": float(clip.fps),
        "frames": [{"c2w": c.tolist(), "K": k.tolist()} for c, k in zip(clip.c2w, clip.K)],
        "panorama": {"file": "panorama.png", "center": [float(x) for x in clip.pano_center]},
        "scene_images": scene_entries,
    }
    dump_json(cameras, tmp / CAMERAS_FILE)
    (tmp / "prompt.txt").write_text(clip.prompt.strip() + "\n")
    dump_json(clip.meta, tmp / "meta.json")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _need(path: Path) -> Path:
    if not path.exists():
        raise CineSceneError(f"clip {path.parent}: missing {path.name}")
    return path


def read_clip(path: Path) -> Clip:
    """Load one clip directory; a missing or unreadable part is a one-line CineSceneError."""
    path = Path(path)
    try:
        cameras = json.loads(_need(path / CAMERAS_FILE).read_text())
        frames = cameras["frames"]
        scene = cameras["scene_images"]
        video = np.load(_need(path / "video.npy"), allow_pickle=False)
        optional = {
            name: np.load(path / f"{name}.npy", allow_pickle=False)
            for name in ("video_bg", "mask")
            if (path / f"{name}.npy").exists()
        }
        clip = Clip(
            clip_id=path.name,
            video=video,
            c2w=np.array([f["c2w"] for f in frames], dtype=np.float64),
            K=np.array([f["K"] for f in frames], dtype=np.float64),
            panorama=load_png(_need(path / cameras["panorama"]["file"])),
            pano_center=np.array(cameras["panorama"]["center"], dtype=np.float64),
            scene_images=np.stack([load_png(_need(path / s["file"])) for s in scene])
            if scene
            else np.zeros((0, 1, 1, 3), np.uint8),
            scene_c2w=np.array([s["c2w"] for s in scene], dtype=np.float64).reshape(-1, 4, 4),
            scene_K=np.array([s["K"] for s in scene], dtype=np.float64).reshape(-1, 3, 3),
            prompt=_need(path / "prompt.txt").read_text().strip(),
            fps=float(cameras["fps"]),
            meta=json.loads(_need(path / "meta.json").read_text()),
            video_bg=optional.get("video_bg"),
            mask=optional.get("mask"),
        )
    except CineSceneError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CineSceneError(
            f"clip {path}: unreadable ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    _check(clip, path)
    return clip


def _check(clip: Clip, path: Path) -> None:
    f = clip.video.shape[0]
    problems = []
    if clip.video.ndim != 4 or clip.video.shape[-1] != 3 or clip.video.dtype != np.uint8:
        problems.append(f"video.npy must be uint8 (F, H, W, 3), got {clip.video.dtype} {clip.video.shape}")
    if len(clip.c2w) != f:
        problems.append(f"{len(clip.c2w)} cameras for {f} frames")
    if clip.video_bg is not None and clip.video_bg.shape != clip.video.shape:
        problems.append(f"video_bg.npy shape {clip.video_bg.shape} differs from video.npy {clip.video.shape}")
    if len(clip.scene_images) == 0:
        problems.append("no scene images")
    for what, poses in (("cameras", clip.c2w), ("scene image cameras", clip.scene_c2w)):
        problem = pose_problem(poses)
        if problem is not None:
            problems.append(f"{what}: {problem}")
    for what, K in (("intrinsics", clip.K), ("scene image intrinsics", clip.scene_K)):
        if (
            K.ndim != 3
            or K.shape[1:] != (3, 3)
            or not np.isfinite(K).all()
            or (K[:, [0, 1], [0, 1]] <= 0).any()
        ):
            problems.append(f"{what}: expected finite pixel intrinsics with positive focal lengths")
    if problems:
        raise CineSceneError(f"clip {path}: {'; '.join(problems)}")


def list_clips(src: Path) -> list[Path]:
    """Clip directories under ``src`` (sorted by name); a one-line error when there are none."""
    src = Path(src)
    problem = kind_problem(src, "directory")
    if problem is not None:
        raise CineSceneError(f"source directory {src} {problem}")
    clips = sorted(
        p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CAMERAS_FILE).is_file()
    )
    if not clips:
        raise CineSceneError(
            f"no clips in {src} (expected <clip_id>/{CAMERAS_FILE} directories, "
            "as written by `cinescene data synth` or `data convert`)"
        )
    return clips
