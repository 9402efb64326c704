"""Camera poses of a video's frames by structure from motion (COLMAP through pycolmap).

What CamI2V runs with the COLMAP/GLOMAP binaries, in process: SIFT features
(affine shape, domain-size pooling), sequential (or exhaustive) guided
matching with geometric verification, incremental
mapping with the intrinsics fixed to the known ones (a single PINHOLE camera;
bundle adjustment refines neither focal length nor principal point). Small
frames are upscaled first (``eval.sfm.min_size``), the intrinsics with them.

A reconstruction that does not register frame 0 (the reference every error is
relative to) or registers fewer than ``eval.sfm.min_registered`` of the frames
is a failure: :class:`SfMResult` says so with a reason, and nothing raises.
COLMAP's own log goes nowhere (its failures are in ``SfMResult.failure``), and
its import leaves the process's SIGTERM handler alone (:func:`import_pycolmap`).
"""

from __future__ import annotations

import math
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cinescene.config.eval import SfMConfig

# One thread: COLMAP's multi-threaded matching and mapping give different reconstructions from run to run
# (measured: CamMC 0.49 or 12.1 on the same video); with one thread and a fixed seed they repeat exactly.
THREADS = 1


@dataclass
class SfMResult:
    """Camera-to-world per frame (NaN rows for frames that did not register) and what registered."""

    c2w: np.ndarray  # (N, 4, 4)
    registered: np.ndarray  # (N,) bool
    failure: str | None = None  # why this counts as a failed reconstruction; None = usable
    trials: list[dict] = field(default_factory=list)

    @property
    def num_registered(self) -> int:
        return int(self.registered.sum())

    @property
    def ok(self) -> bool:
        return self.failure is None


def upscale(frames: np.ndarray, K: np.ndarray, min_size: int):
    """Frames resized (bicubic) so that the shorter side is >= ``min_size``; intrinsics scaled alike."""
    height, width = frames.shape[1:3]
    if min_size <= 0 or min(height, width) >= min_size:
        return frames, np.asarray(K, dtype=np.float64)
    factor = min_size / min(height, width)
    new_h, new_w = int(math.ceil(height * factor)), int(math.ceil(width * factor))
    resized = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BICUBIC)) for f in frames])
    scale = np.diag([new_w / width, new_h / height, 1.0])
    return resized, scale @ np.asarray(K, dtype=np.float64)


def import_pycolmap():
    """pycolmap, imported without letting it take SIGTERM.

    Importing pycolmap installs glog's failure signal handler, which replaces
    whatever handled SIGTERM before (a trainer's preemption flag, Python's
    default) by one that prints a native stack trace and dies. The handler
    that was there is put back. COLMAP's log is limited to fatal messages:
    a failed reconstruction is reported by ``SfMResult.failure`` instead
    ("Failed to create any sparse model" and the like).
    """
    if "pycolmap" in sys.modules:
        return sys.modules["pycolmap"]
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    import pycolmap

    if main and previous is not None:
        signal.signal(signal.SIGTERM, previous)
    pycolmap.logging.minloglevel = 3  # glog levels: 0 info .. 3 fatal
    return pycolmap


def reconstruct(frames: np.ndarray, K: np.ndarray, cfg: SfMConfig, seed: int) -> SfMResult:
    """One SfM run over uint8 frames (N, H, W, 3) with pixel intrinsics ``K`` (3, 3)."""
    pycolmap = import_pycolmap()
    count = len(frames)
    frames, K = upscale(np.asarray(frames, dtype=np.uint8), K, cfg.min_size)
    nan = np.full((count, 4, 4), np.nan)
    with tempfile.TemporaryDirectory(prefix="cinescene-sfm-") as tmp:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        names = [f"{i:05d}.png" for i in range(count)]
        for name, frame in zip(names, frames):
            Image.fromarray(frame).save(images / name)
        database = root / "database.db"
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(f"{v:.10g}" for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.use_gpu = False
        extraction.num_threads = THREADS
        extraction.sift.max_num_features = cfg.max_features
        extraction.sift.estimate_affine_shape = cfg.affine_shape
        extraction.sift.domain_size_pooling = cfg.affine_shape
        pycolmap.extract_features(
            database,
            images,
            image_names=names,
            camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        matching = pycolmap.FeatureMatchingOptions()
        matching.use_gpu = False
        matching.num_threads = THREADS
        matching.guided_matching = cfg.guided_matching
        if cfg.matching == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = cfg.overlap
            pycolmap.match_sequential(
                database, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu
            )
        else:
            pycolmap.match_exhaustive(database, matching_options=matching, device=pycolmap.Device.cpu)
        options = pycolmap.IncrementalPipelineOptions()
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.num_threads = THREADS
        options.random_seed = int(seed)
        (root / "sparse").mkdir()
        models = pycolmap.incremental_mapping(database, images, root / "sparse", options=options)
    best = None
    for model in models.values():
        by_name = {image.name: image for image in model.images.values() if image.has_pose}
        if names[0] in by_name and (best is None or len(by_name) > len(best)):
            best = by_name
    if best is None:
        reason = "no reconstruction" if not models else "frame 0 did not register"
        return SfMResult(nan, np.zeros(count, bool), reason)
    c2w = nan.copy()
    registered = np.zeros(count, bool)
    for i, name in enumerate(names):
        if name in best:
            w2c = np.eye(4)
            pose = best[name].cam_from_world
            w2c[:3] = (pose() if callable(pose) else pose).matrix()  # a method since pycolmap 3.12
            c2w[i] = np.linalg.inv(w2c)
            registered[i] = True
    return SfMResult(c2w, registered)


def estimate_poses(frames: np.ndarray, K: np.ndarray, cfg: SfMConfig) -> list[SfMResult]:
    """``cfg.trials`` reconstructions (seeds ``cfg.seed + i``), each judged against ``cfg.min_registered``."""
    results = []
    for trial in range(cfg.trials):
        try:
            result = reconstruct(frames, K, cfg, cfg.seed + trial)
        except Exception as exc:  # COLMAP's own failures (too few features, a degenerate pair, ...)
            count = len(frames)
            result = SfMResult(
                np.full((count, 4, 4), np.nan),
                np.zeros(count, bool),
                f"COLMAP failed: {type(exc).__name__}: {exc}".splitlines()[0],
            )
        if result.ok and result.num_registered < cfg.min_registered * len(frames):
            result.failure = (
                f"{result.num_registered} of {len(frames)} frames registered "
                f"(eval.sfm.min_registered={cfg.min_registered})"
            )
        results.append(result)
    return results
