"""`cinescene sample`: one video from a checkpoint, a scene, a camera path and a prompt.

The steps, each in its own module: resolve the checkpoint and its config
(:mod:`.checkpoint`), learn what the model generates from its training data
(:mod:`.spec`), pick the device and precision (:mod:`.device`), gather the
conditioning (:mod:`.inputs`, :mod:`.cameras`, :mod:`.codec`), generate
(:mod:`.pipeline`), write the mp4, its JSON and the PNG strip (:mod:`.video`).
:func:`run_sample` takes a :class:`SampleRequest`, the command's flags as typed fields.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cinescene import __version__
from cinescene.ckpt.config import checkpoint_config
from cinescene.ckpt.layout import refuse_inside_checkpoint
from cinescene.ckpt.locate import resolve_checkpoint
from cinescene.config.base import ConfigError, in_range, require
from cinescene.config.eval import MAX_SAMPLE_STEPS
from cinescene.config.paths import check_distinct, check_output_location
from cinescene.durable import write_json_atomic
from cinescene.errors import CineSceneError
from cinescene.log import get_logger, setup_logging, show_progress_bars
from cinescene.secrets import scrub, secret_values

from .cameras import MAX_CAMERA_SCALE, anchor_trajectory, load_scene_cameras, resolve_camera
from .checkpoint import load_inference_model
from .codec import build_codec
from .device import device_and_dtype
from .inputs import ShardSamples, load_scene_folder, parse_shard_ref
from .pipeline import Settings, StepBar, VideoGenerator
from .spec import check_eval_data, training_spec
from .video import write_mp4, write_strip

_log = get_logger("sampling")
# Bounds of the sampling flags (Wan samples with guidance 5 and shift 3 to 17): far past them a sampler
# only diverges.
MAX_GUIDANCE, MAX_SHIFT = 100.0, 1000.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SampleRequest:
    """What `cinescene sample` is asked for: its arguments, one field per flag (``cinescene sample --help``
    says what each means and defaults to; None: the checkpoint's config decides)."""

    checkpoint: str  # a run, checkpoints, step or export directory
    overrides: Sequence[str]  # KEY=VALUE overrides of the checkpoint's config
    scene: str  # a folder of scene images or SHARDS:KEY
    camera: str | None  # a JSON trajectory or a preset name
    camera_scale: float
    scene_cameras: str | None  # a JSON file of the scene images' cameras
    prompt: str | None
    negative_prompt: str | None
    steps: int | None
    cfg: float | None
    shift: float | None
    seed: int
    ema: bool
    out: str  # the mp4
    png: str | None  # a PNG strip of frames
    device: str | None
    dtype: str | None  # fp32, bf16 or fp16 (.device.DTYPES)
    vae: str | None
    text_encoder: str | None


def check_settings(request: SampleRequest) -> None:
    """The sampling flags: positive, finite and within what a sampler can use (a billion steps never
    ends; a guidance scale of 1e308 or a shift of inf gives a black video)."""
    if request.steps is not None:
        in_range(request.steps, "--steps", 1, MAX_SAMPLE_STEPS)
    if request.cfg is not None:
        require(
            math.isfinite(request.cfg) and 0 <= request.cfg <= MAX_GUIDANCE,
            "--cfg",
            f"a value in [0, {MAX_GUIDANCE:g}]",
            request.cfg,
        )
    if request.shift is not None:
        require(
            math.isfinite(request.shift) and 0 < request.shift <= MAX_SHIFT,
            "--shift",
            f"a value in (0, {MAX_SHIFT:g}]",
            request.shift,
        )
    require(
        math.isfinite(request.camera_scale) and 0 <= request.camera_scale <= MAX_CAMERA_SCALE,
        "--camera-scale",
        f"a value in [0, {MAX_CAMERA_SCALE:g}]",
        request.camera_scale,
    )
    in_range(request.seed, "--seed", 0, MAX_SEED)


def check_outputs(request: SampleRequest) -> Path:
    """``--out`` (an mp4), its JSON sidecar and ``--png``: three different files, none of them an input of the
    command (the camera files, a scene image), none inside a checkpoint or a system directory."""
    out = Path(request.out)
    if out.suffix.lower() == ".json":
        raise ConfigError(
            "--out", f"expected an mp4 path, got {request.out!r}: its settings go to a .json beside it"
        )
    outputs = {"--out": out, "the settings file beside --out": out.with_suffix(".json")}
    if request.png:
        outputs["--png"] = Path(request.png)
    inputs = {"--camera": request.camera, "--scene-cameras": request.scene_cameras}
    if request.scene and Path(request.scene).is_dir():
        inputs.update({f"--scene image {p.name}": p for p in Path(request.scene).iterdir()})
    for key, path in outputs.items():
        if path.is_dir():
            raise CineSceneError(f"{key} {path} is a directory; give a file name")
        check_output_location(path, key)
        refuse_inside_checkpoint(path, key)
    check_distinct(outputs, {k: v for k, v in inputs.items() if v is not None and Path(v).exists()})
    return out


def _scene_cameras(request: SampleRequest, cfg, scene, shard_sample) -> tuple[object | None, str | None]:
    """The scene images' cameras and where they come from, for a model with scene anchoring
    (``model.scene.pose_embedding``); (None, None) for other models, which ignore them."""
    if not (cfg.model.scene.enabled and cfg.model.scene.pose_embedding):
        if request.scene_cameras is not None:
            _log.warning(
                "--scene-cameras is ignored: the model does not anchor the scene to the camera "
                "(model.scene.pose_embedding is off)"
            )
        return None, None
    if request.scene_cameras is not None:
        return load_scene_cameras(request.scene_cameras, len(scene)), f"file {request.scene_cameras}"
    if shard_sample is not None:
        return shard_sample.scene_cameras, f"the scene cameras of sample {shard_sample.key}"
    raise CineSceneError(
        "the model anchors the scene to the camera (model.scene.pose_embedding): give the scene "
        "images' cameras with --scene-cameras FILE.json (one camera-to-world per image, in file-name "
        "order, in the world of --camera), or use --scene SHARDS:KEY"
    )


def run_sample(request: SampleRequest) -> int:
    setup_logging("INFO")
    check_settings(request)
    out = check_outputs(request)
    started = time.perf_counter()
    source = resolve_checkpoint(request.checkpoint)
    cfg = checkpoint_config(source, request.overrides)
    show_progress_bars(cfg.run.progress)
    spec = training_spec(cfg)
    device, dtype = device_and_dtype(request.device, request.dtype)

    shard_sample = None
    reference = parse_shard_ref(request.scene)
    if reference is not None:
        samples = ShardSamples(reference[0], spec, cfg.model)
        check_eval_data(spec, samples.manifest, "scene shards")
        shard_sample = samples.read(samples.index_of(reference[1]))
        scene, scene_desc = shard_sample.scene, f"sample {reference[1]} of {reference[0]}"
        scene_names = [f"{reference[1]}/scene_{i:02d}" for i in range(len(scene))]
    elif Path(request.scene).is_dir():
        scene, scene_names = load_scene_folder(request.scene, spec)
        scene_desc = f"folder {request.scene}"
    else:
        raise CineSceneError(
            f"--scene {request.scene}: neither a folder of images nor SHARDS:KEY (a shard "
            "directory with manifest.json, a colon, a sample key)"
        )

    fov = None
    if request.camera is not None:
        cameras, fov, camera_desc = resolve_camera(request.camera, spec.latent_frames, request.camera_scale)
    elif shard_sample is not None:
        cameras, camera_desc = shard_sample.cameras, f"the trajectory of sample {shard_sample.key}"
    else:
        raise ConfigError(
            "--camera", "required (a preset name or a JSON trajectory) unless --scene is SHARDS:KEY"
        )
    scene_cameras, anchoring = _scene_cameras(request, cfg, scene, shard_sample)
    if (
        anchoring
        and request.scene_cameras is None
        and shard_sample is not None
        and request.camera is not None
    ):
        # The sample's scene cameras live in its clip's world: the requested path starts where the clip
        # starts.
        cameras = anchor_trajectory(cameras, shard_sample.cameras[0])
    prompt = request.prompt if request.prompt is not None else (shard_sample.prompt if shard_sample else None)
    if prompt is None:
        raise ConfigError("--prompt", "required unless --scene is SHARDS:KEY (whose prompt is then used)")

    codec = build_codec(
        spec, cfg.model, vae=request.vae, text_encoder=request.text_encoder, device=str(device)
    )
    text = (
        shard_sample.text
        if (shard_sample is not None and request.prompt is None)
        else codec.encode_text(prompt)
    )
    negative = codec.encode_text(request.negative_prompt) if request.negative_prompt else None
    model = load_inference_model(source, cfg, ema=request.ema, device=device, dtype=dtype)
    settings = Settings(
        steps=request.steps or cfg.eval.sample_steps,
        guidance_scale=cfg.eval.cfg_scale if request.cfg is None else request.cfg,
        shift=request.shift or cfg.train.flow.shift,
        seed=request.seed,
    )
    generator = VideoGenerator(model, spec, codec, device)
    cache = generator.context_cache()
    _log.info(
        "sampling %s: %d steps, guidance %g, shift %g, seed %d, %s on %s, context cache %s",
        spec.describe(),
        settings.steps,
        settings.guidance_scale,
        settings.shift,
        settings.seed,
        str(dtype).replace("torch.", ""),
        device,
        cache,
    )
    bar = StepBar(settings.steps, "sample")
    try:
        latents = generator.latents(
            text,
            cameras,
            scene,
            settings,
            key="sample",
            negative_text=negative,
            callback=bar.update,
            scene_cameras=scene_cameras,
        )
    finally:
        bar.close()
    if not torch.isfinite(latents).all():  # decoded, it would be a black video
        raise CineSceneError(
            f"sampling diverged (non-finite latents) with {settings.steps} steps, guidance "
            f"{settings.guidance_scale:g}, shift {settings.shift:g} and {camera_desc}; nothing was written"
        )
    frames = codec.decode(latents)
    fps = spec.video_fps(cfg.eval.fps)
    metadata = {
        "cinescene": __version__,
        "checkpoint": str(source.path),
        "step": source.step,
        "weights": "ema" if request.ema else "trained",
        "model": cfg.model.name,
        "encoder": spec.encoder_name,
        "prompt": prompt,
        "negative_prompt": request.negative_prompt,
        "scene": scene_desc,
        "scene_images": scene_names,
        "camera": camera_desc,
        "camera_scale": request.camera_scale if request.camera else None,
        "fov": fov,
        "scene_anchoring": anchoring,
        "cameras_c2w": [[[round(float(v), 6) for v in row] for row in c[:3]] for c in cameras],
        "steps": settings.steps,
        "cfg": settings.guidance_scale,
        "shift": settings.shift,
        "seed": settings.seed,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "context_cache": cache,
        "attention_backend": cfg.model.attention.backend,
        "frames": int(len(frames)),
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "fps": fps,
        "overrides": list(request.overrides),
    }
    metadata = scrub(metadata, secret_values(config=OmegaConf.to_container(OmegaConf.structured(cfg))))
    sidecar = out.with_suffix(".json")
    try:
        metadata["codec"] = write_mp4(out, frames, fps, metadata)
        write_json_atomic(sidecar, metadata)
        if request.png:
            write_strip(request.png, frames)
    except OSError as exc:
        raise CineSceneError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    codec_name = metadata["codec"]
    print(
        f"wrote {out}: {len(frames)} frames, {frames.shape[1]}x{frames.shape[2]}, {codec_name}, {fps:g} fps "
        f"({time.perf_counter() - started:.1f} s); settings in {sidecar}"
        + (f"; frames in {request.png}" if request.png else "")
    )
    return 0
