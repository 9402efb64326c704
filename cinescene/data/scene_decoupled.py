"""The public Scene-Decoupled Video dataset layout (UE5 renders, CineScene paper): parse, convert, export.

Everything this package assumes about that dataset lives in this module.

What is public (dataset card of KlingTeam/Scene-Decoupled-Video-dataset):
``camera/{whuman,wohuman}/<scene_id>/<scene_id>_cam.json`` (e.g. scene_id
``scene1_3x3_loc1_scene_AncientTempleEnv``), videos with the subject
(``whuman``) and without it (``wohuman``), and equirectangular panoramas of
the static scene shared by both sets.

What is assumed (not published in detail; change it here, in one place):

* ``_cam.json`` follows the MultiCamVideo convention of ReCamMaster (same
  lineage): ``{"frame<i>": M, ...}`` with ``M`` a 4x4 Unreal transform, either
  a string ``"[a b c d] [e f g h] [i j k l] [x y z 1]"`` or a nested list, or a
  one-entry ``{"cam01": M}`` mapping. Unreal matrices are row-vector: rows 0-2
  are the camera's forward (X), right (Y) and up (Z) axes in the world, row 3
  the location in centimetres. Optional keys: ``fov`` (horizontal degrees)
  and ``panorama_location`` (UE centimetres).
* Videos: the first existing of ``VIDEO_PATTERNS``; a video is an ``.mp4``
  (decoded with PyAV) or a directory of frame images.
* Panoramas: the first existing of ``PANORAMA_PATTERNS``, centred on UE +X
  with UE +Y to the right. Its capture point is ``panorama_location`` when the
  camera file has one, else the world origin (recorded in meta.json).
* Captions: ``--captions DIR`` of ``<scene_id>.txt``; otherwise a prompt made
  from the scene id.

Coordinates. Unreal is left-handed (X forward, Y right, Z up, cm). We flip
the world's y axis to get a right-handed z-up world in metres, and express
the camera in OpenCV axes: x = UE right, y = -UE up, z = UE forward -- the
axis permutation of ReCamMaster's training script (its c2w columns
``[1, 2, 0]``, column 1 negated, /100). Relative poses ``inv(C_0) C_i`` are
identical to ReCamMaster's; only the world handedness differs (theirs keeps
Unreal's left-handed world, so its absolute rotations have determinant -1).
Cameras stay per source frame here; `data prepare` keeps every 4th (Wan's
temporal stride: frames 0, 4, 8, ...).
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np

from cinescene.config.base import ConfigError
from cinescene.config.paths import check_output_location, check_separate, kind_problem
from cinescene.errors import CineSceneError
from cinescene.log import get_logger, progress

from .clips import Clip, load_png, save_png, write_clip
from .geometry import hfov_problem, intrinsics, panorama_views

SETS = ("whuman", "wohuman")
VIDEO_PATTERNS = (
    "video/{set}/{scene}/{scene}.mp4",
    "video/{set}/{scene}.mp4",
    "videos/{set}/{scene}/{scene}.mp4",
    "videos/{set}/{scene}.mp4",
    "video/{set}/{scene}/{scene}",
    "videos/{set}/{scene}/{scene}",
)
PANORAMA_PATTERNS = (
    "panorama/{scene}.png",
    "panorama/{scene}.jpg",
    "panorama/{scene}/panorama.png",
    "panoramas/{scene}.png",
    "panoramas/{scene}.jpg",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# World y flip (left- to right-handed) and the UE-local -> OpenCV camera axes.
FLIP_Y = np.diag([1.0, -1.0, 1.0])
log = get_logger("data.convert")


# ---------------------------------------------------------------- coordinates


def ue_to_opencv(ue: np.ndarray) -> np.ndarray:
    """Unreal row-vector transforms (..., 4, 4), cm -> OpenCV camera-to-world (..., 4, 4), metres."""
    ue = np.asarray(ue, dtype=np.float64)
    axes = ue[..., :3, :3] / np.linalg.norm(ue[..., :3, :3], axis=-1, keepdims=True)  # drop any scale
    forward, right, up = axes[..., 0, :], axes[..., 1, :], axes[..., 2, :]
    c2w = np.zeros(ue.shape)
    c2w[..., :3, 0] = right @ FLIP_Y
    c2w[..., :3, 1] = -up @ FLIP_Y
    c2w[..., :3, 2] = forward @ FLIP_Y
    c2w[..., :3, 3] = ue[..., 3, :3] @ FLIP_Y / 100.0
    c2w[..., 3, 3] = 1.0
    return c2w


def opencv_to_ue(c2w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ue_to_opencv` (used to write fixtures in the dataset's layout)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    ue = np.zeros(c2w.shape)
    ue[..., 0, :3] = c2w[..., :3, 2] @ FLIP_Y
    ue[..., 1, :3] = c2w[..., :3, 0] @ FLIP_Y
    ue[..., 2, :3] = -c2w[..., :3, 1] @ FLIP_Y
    ue[..., 3, :3] = c2w[..., :3, 3] @ FLIP_Y * 100.0
    ue[..., 3, 3] = 1.0
    return ue


def ue_location_to_world(location) -> np.ndarray:
    return np.asarray(location, dtype=np.float64) @ FLIP_Y / 100.0


# ---------------------------------------------------------------- parsing


def _matrix(value, where: str) -> np.ndarray:
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if isinstance(value, str):
        numbers = [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", value)]
        value = numbers
    array = np.asarray(value, dtype=np.float64)
    if array.size != 16:
        raise CineSceneError(f"{where}: expected a 4x4 matrix, got {array.size} numbers")
    return array.reshape(4, 4)


def parse_camera_file(path: Path) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """A ``_cam.json`` -> (c2w (F, 4, 4) OpenCV metres, hfov radians or None, panorama centre or None)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CineSceneError(f"{path}: unreadable camera file ({exc})".splitlines()[0]) from None
    frames = sorted((int(k[5:]), v) for k, v in data.items() if re.fullmatch(r"frame\d+", k))
    if not frames:
        raise CineSceneError(f"{path}: no 'frame<N>' entries")
    ue = np.stack([_matrix(v, f"{path} frame{i}") for i, v in frames])
    fov = data.get("fov")
    if fov is not None and hfov_problem(fov):
        raise CineSceneError(f"{path}: 'fov': {hfov_problem(fov)}")
    center = data.get("panorama_location")
    return (
        ue_to_opencv(ue),
        None if fov is None else float(np.radians(float(fov))),
        None if center is None else ue_location_to_world(center),
    )


def _first_existing(root: Path, patterns, **names) -> Path | None:
    for pattern in patterns:
        path = root / pattern.format(**names)
        if path.exists():
            return path
    return None


def read_frames(path: Path) -> np.ndarray:
    """uint8 (F, H, W, 3) from a directory of frame images or a video file (PyAV)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CineSceneError(f"{path}: no frame images ({', '.join(IMAGE_SUFFIXES)})")
        return np.stack([load_png(p) for p in files])
    try:
        import av
    except ImportError:
        raise CineSceneError(
            f"decoding {path.name} needs PyAV (pip install av), or extract its frames "
            "into a directory of PNGs with the same name"
        ) from None
    try:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except Exception as exc:  # PyAV raises many types for corrupt input
        raise CineSceneError(
            f"{path}: cannot decode video ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None


def scene_ids(src: Path) -> list[str]:
    ids = set()
    for name in SETS:
        folder = src / "camera" / name
        if folder.is_dir():
            ids.update(p.name for p in folder.iterdir() if (p / f"{p.name}_cam.json").is_file())
    return sorted(ids)


def _prompt_from_id(scene_id: str, with_subject: bool) -> str:
    env = scene_id.split("_scene_")[-1]
    env = re.sub(r"Env$", "", env)
    words = re.sub(r"(?<=[a-z])(?=[A-Z])|_", " ", env).lower().strip() or "a scene"
    return f"{'A person moving' if with_subject else 'An empty scene'} in {words}."


# ---------------------------------------------------------------- conversion


def convert_scene(
    src: Path, scene_id: str, out: Path, scene_images: int, hfov: float | None, captions: Path | None
) -> Path:
    """One scene id -> one clip directory in our layout (see cinescene.data.clips)."""
    sets = {}
    for name in SETS:
        cam = src / "camera" / name / scene_id / f"{scene_id}_cam.json"
        if cam.is_file():
            video = _first_existing(src, VIDEO_PATTERNS, set=name, scene=scene_id)
            if video is None:
                raise CineSceneError(
                    f"{scene_id}: no {name} video (tried {', '.join(VIDEO_PATTERNS)} under {src})"
                )
            sets[name] = (parse_camera_file(cam), read_frames(video))
    main = "whuman" if "whuman" in sets else "wohuman"
    (c2w, file_hfov, center), video = sets[main]
    video_bg = sets["wohuman"][1] if main == "whuman" and "wohuman" in sets else None
    if video_bg is not None:
        other = sets["wohuman"][0][0]
        n = min(len(c2w), len(other))
        if not np.allclose(c2w[:n, :3, 3], other[:n, :3, 3], atol=1e-3):
            log.warning("%s: with/without-subject cameras differ; using the with-subject ones", scene_id)
    frames = min(len(c2w), len(video), len(video_bg) if video_bg is not None else len(video))
    hfov = file_hfov if file_hfov is not None else hfov
    if hfov is None:
        raise CineSceneError(f"{scene_id}: the camera file has no 'fov'; pass --hfov DEGREES")
    pano_path = _first_existing(src, PANORAMA_PATTERNS, scene=scene_id)
    if pano_path is None:
        raise CineSceneError(f"{scene_id}: no panorama (tried {', '.join(PANORAMA_PATTERNS)} under {src})")
    panorama = load_png(pano_path)
    height, width = video.shape[1:3]
    center_known = center is not None
    center = center if center_known else np.zeros(3)
    rng = np.random.default_rng(zlib.crc32(scene_id.encode()))  # stable per scene, independent of order
    images, scene_c2w, scene_K = panorama_views(rng, panorama, center, scene_images, height, width)
    caption_file = captions / f"{scene_id}.txt" if captions is not None else None
    prompt = (
        caption_file.read_text().strip()
        if caption_file is not None and caption_file.is_file()
        else _prompt_from_id(scene_id, main == "whuman")
    )
    K = intrinsics(height, width, hfov)
    meta = {
        "source": "scene-decoupled",
        "scene_id": scene_id,
        "sets": sorted(sets),
        "panorama": str(pano_path.relative_to(src)),
        "panorama_center_known": center_known,
        "hfov_deg": float(np.degrees(hfov)),
    }
    clip = Clip(
        scene_id.replace(".", "_"),
        video[:frames],
        c2w[:frames],
        np.repeat(K[None], frames, 0),
        panorama,
        center,
        images,
        scene_c2w,
        scene_K,
        prompt,
        fps=16.0,
        meta=meta,
        video_bg=None if video_bg is None else video_bg[:frames],
    )
    return write_clip(clip, out)


def convert(
    src,
    out,
    scene_images: int = 20,
    hfov_deg: float | None = None,
    captions=None,
    show_progress: bool = True,
) -> Path:
    """Convert every scene under ``src`` into clip directories under ``out``; returns ``out``."""
    src, out = Path(src), Path(out)
    problem = kind_problem(src, "directory")
    if problem is not None:
        raise CineSceneError(f"source directory {src} {problem}")
    ids = scene_ids(src)
    if not ids:
        raise CineSceneError(
            f"no scenes in {src}: expected camera/{{whuman,wohuman}}/<scene_id>/<scene_id>_cam.json"
        )
    if scene_images < 1:
        raise ConfigError("--scene-images", f"expected a value >= 1, got {scene_images}")
    if hfov_deg is not None and hfov_problem(hfov_deg):
        raise ConfigError("--hfov", hfov_problem(hfov_deg))
    check_output_location(out, "--out")
    check_separate(src, out, "--src", "--out")
    out.mkdir(parents=True, exist_ok=True)
    hfov = None if hfov_deg is None else float(np.radians(hfov_deg))
    for scene_id in progress(ids, enabled=show_progress, desc="convert", unit="scene"):
        if (out / scene_id / "meta.json").is_file():
            continue  # converted by an earlier run (clip directories appear atomically)
        convert_scene(src, scene_id, out, scene_images, hfov, None if captions is None else Path(captions))
    log.info("converted %d scenes from %s into %s", len(ids), src, out)
    return out


# ---------------------------------------------------------------- fixture export


def export_clip(clip: Clip, root: Path) -> None:
    """Write a clip in the dataset's layout (for tests of the converter): cameras, frame dirs, panorama."""
    scene_id = clip.clip_id
    cam = {
        f"frame{i}": " ".join("[" + " ".join(repr(float(x)) for x in row) + "]" for row in m)
        for i, m in enumerate(opencv_to_ue(clip.c2w))
    }
    cam["fov"] = float(np.degrees(2 * np.arctan(clip.video.shape[2] / (2 * clip.K[0, 0, 0]))))
    cam["panorama_location"] = (clip.pano_center @ FLIP_Y * 100.0).tolist()
    save_png(clip.panorama, _mkdir(root / "panorama") / f"{scene_id}.png")
    (_mkdir(root / "captions") / f"{scene_id}.txt").write_text(clip.prompt + "\n")
    for name, video in (("whuman", clip.video), ("wohuman", clip.video_bg)):
        frames = _mkdir(root / "video" / name / scene_id / scene_id)
        for i, frame in enumerate(video):
            save_png(frame, frames / f"{i:05d}.png")
    for name in ("wohuman", "whuman"):  # whuman last: its presence marks the scene complete
        folder = _mkdir(root / "camera" / name / scene_id)
        (folder / f"{scene_id}_cam.json").write_text(json.dumps(cam, sort_keys=True, indent=1) + "\n")


def exported(root: Path, clip_id: str) -> bool:
    return (root / "camera" / "whuman" / clip_id / f"{clip_id}_cam.json").is_file()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
