"""Sampling with and without the context K/V cache: time per run, speed-up, and whether the video is the same.

What ``cinescene bench sampling`` runs. The model is the configured one with
random weights (``model.pretrained`` is not loaded: the figure is about speed
and exactness, not quality; parameters initialised to zero, such as the output
head and the camera encoders, get small random values so the output depends on
every part of the network). The inputs are synthetic, at the configured data
shape (``model.data_shape``, else the data section): Gaussian noise latents,
a random prompt embedding, a smooth camera orbit, random scene images. Both
runs start from the same noise and use the same guidance (``eval.cfg_scale``)
and shift (``train.flow.shift``); before timing, each path runs a short
warm-up (Triton autotuning and compilation happen there, not in the timed runs).

The cache is exact only with clean context and the context-readonly mask
(:func:`cinescene.models.context_cache.check_cacheable`);
:func:`cache_overrides` names the overrides a config lacks for that, and the
command applies them (and says so) rather than timing a model that cannot
use the cache.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from cinescene.errors import CineSceneError
from cinescene.kernels.provenance import provenance
from cinescene.models import build_model
from cinescene.models.flops import SampleShape, token_counts

from .sampler import sample

#: Settings the context cache needs (see ``check_cacheable``), as dotlist overrides.
CACHE_SETTINGS = {"model.attention.mask": "context_readonly", "model.scene.timestep": "clean"}
WARMUP_STEPS = 2
#: Standard deviation given to parameters that are initialised to zero.
ZERO_INIT_STD = 0.02
GOAL_SPEEDUP = 1.6
GOAL_MODEL = "wan1.3b"


def cache_overrides(cfg) -> list[str]:
    """The dotlist overrides ``cfg`` needs before the context cache applies (empty when none)."""
    if not cfg.model.scene.enabled:
        raise CineSceneError("model.scene.enabled is false: there is no scene context to cache")
    current = {
        "model.attention.mask": cfg.model.attention.mask,
        "model.scene.timestep": cfg.model.scene.timestep,
    }
    return [f"{key}={value}" for key, value in CACHE_SETTINGS.items() if current[key] != value]


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.2f} MB"


@dataclass
class SamplingPlan:
    """What one benchmark run does, known before any weight is allocated."""

    model: str
    device: str
    dtype: str
    steps: int
    guidance_scale: float
    shift: float
    latent_shape: list[int]  # (B, C, T, H, W)
    scene_images: int
    video_tokens: int
    context_tokens: int
    guidance_branches: int
    cache_bytes_per_branch: int

    def describe(self) -> str:
        return (
            f"{self.model} on {self.device} ({self.dtype}): {self.steps} steps, guidance "
            f"{self.guidance_scale} ({self.guidance_branches} branches), shift {self.shift}; latents "
            f"{self.latent_shape}, "
            f"{self.video_tokens:,} video + {self.context_tokens:,} context tokens from {self.scene_images} "
            f"scene images; context cache {_size(self.cache_bytes_per_branch)} per branch, "
            f"{_size(self.guidance_branches * self.cache_bytes_per_branch)} in all"
        )


def plan(cfg, steps: int, device: str, dtype: torch.dtype) -> SamplingPlan:
    shape = SampleShape.from_config(cfg)
    tokens = token_counts(cfg.model, shape)
    branches = 1 if cfg.eval.cfg_scale == 1.0 else 2
    element = torch.tensor([], dtype=dtype).element_size()
    return SamplingPlan(
        model=cfg.model.name,
        device=device,
        dtype=str(dtype).replace("torch.", ""),
        steps=steps,
        guidance_scale=cfg.eval.cfg_scale,
        shift=cfg.train.flow.shift,
        latent_shape=[1, cfg.model.in_dim, shape.latent_frames, shape.latent_height, shape.latent_width],
        scene_images=shape.scene_images,
        video_tokens=tokens.video,
        context_tokens=tokens.context,
        guidance_branches=branches,
        cache_bytes_per_branch=2 * cfg.model.num_layers * tokens.context * cfg.model.dim * element,
    )


def synthetic_inputs(cfg, the_plan: SamplingPlan, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Noise, prompt embedding, camera orbit (one camera per latent frame) and scene images, all seeded."""
    gen = torch.Generator().manual_seed(seed)
    shape = SampleShape.from_config(cfg)
    frames = shape.latent_frames
    angle = torch.linspace(0.0, 0.5, frames)  # a quarter-radian pan with a sideways move
    cameras = torch.eye(4).repeat(1, frames, 1, 1)
    cameras[0, :, 0, 0], cameras[0, :, 0, 2] = torch.cos(angle), torch.sin(angle)
    cameras[0, :, 2, 0], cameras[0, :, 2, 2] = -torch.sin(angle), torch.cos(angle)
    cameras[0, :, 0, 3] = torch.linspace(0.0, 1.0, frames)
    inputs = dict(
        noise=torch.randn(the_plan.latent_shape, generator=gen),
        text=torch.randn(1, cfg.model.text_len, cfg.model.text_dim, generator=gen),
        cameras=cameras,
        scene_images=torch.rand(
            1, shape.scene_images, 3, shape.scene_height, shape.scene_width, generator=gen
        ),
    )
    return {name: t.to(device) for name, t in inputs.items()}


@torch.no_grad()
def _randomize_zero_parameters(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if not bool(param.any()):
            param.copy_(torch.randn(param.shape, generator=gen) * ZERO_INIT_STD)


def build_random_model(cfg, device, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg.model, device=device, dtype=dtype, load_weights=False).eval()
    _randomize_zero_parameters(model, seed)
    return model


@dataclass
class Run:
    seconds: float
    step_seconds: list[float] = field(default_factory=list)


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_sample(
    model,
    inputs: dict[str, torch.Tensor],
    the_plan: SamplingPlan,
    steps: int,
    cache: bool,
    offload: bool = False,
):
    """(video latents, Run): one call of the sampler, timed as a whole and per step."""
    device = inputs["noise"].device
    marks: list[float] = []

    def mark(step, x):
        _synchronize(device)
        marks.append(time.perf_counter())

    _synchronize(device)
    start = time.perf_counter()
    out = sample(
        model,
        inputs["noise"],
        inputs["text"],
        steps=steps,
        shift=the_plan.shift,
        guidance_scale=the_plan.guidance_scale,
        cameras=inputs["cameras"],
        scene_images=inputs["scene_images"],
        context_cache=cache,
        context_cache_offload=offload,
        callback=mark,
    )
    bounds = [start] + marks
    return out, Run(seconds=marks[-1] - start, step_seconds=[b - a for a, b in zip(bounds[:-1], bounds[1:])])


def projected_speedup(plain: Run, cached: Run, steps: int) -> float:
    """Speed-up at ``steps`` steps from the per-step times: the first step (scene encoding, and the cache
    fill) as measured, every later step at the median of the measured later steps."""

    def total(run: Run) -> float:
        later = run.step_seconds[1:] or run.step_seconds
        return run.step_seconds[0] + (steps - 1) * statistics.median(later)

    return total(plain) / total(cached)


def run_benchmark(
    cfg,
    steps: int,
    device: str,
    dtype: torch.dtype,
    seed: int = 0,
    target_steps: int | None = None,
    offload: bool = False,
) -> dict:
    """Warm up, then sample ``steps`` steps without and with the cache; the report (see module docstring).

    ``offload``: the cache keeps its keys/values in host memory and streams them in per layer."""
    the_plan = plan(cfg, steps, device, dtype)
    target_steps = target_steps or cfg.eval.sample_steps
    model = build_random_model(cfg, device, dtype, seed)
    inputs = synthetic_inputs(cfg, the_plan, device, seed)
    for cache in (False, True):
        timed_sample(model, inputs, the_plan, min(WARMUP_STEPS, steps), cache, offload)
    plain_out, plain = timed_sample(model, inputs, the_plan, steps, cache=False)
    cached_out, cached = timed_sample(model, inputs, the_plan, steps, cache=True, offload=offload)
    diff = float((cached_out - plain_out).abs().max())
    scale = float(plain_out.abs().max())
    speedup = plain.seconds / cached.seconds
    report = dict(
        provenance=provenance(torch.device(device)),
        plan=asdict(the_plan),
        seed=seed,
        inputs="synthetic (seeded noise, prompt embedding, camera orbit, scene images); random weights",
        timing=f"wall clock of one sampler call each, after a {WARMUP_STEPS}-step warm-up of both paths; "
        "per-step times from the sampler's callback (synchronised on CUDA)",
        plain=asdict(plain),
        cached=asdict(cached),
        cache_offload=offload,
        speedup=speedup,
        median_speedup=projected_speedup(plain, cached, steps),
        max_abs_diff=diff,
        max_abs_output=scale,
        relative_diff=diff / max(scale, 1e-30),
    )
    if target_steps != steps:
        report["target_steps"] = target_steps
        report["projected_speedup"] = projected_speedup(plain, cached, target_steps)
    return report


def format_report(report: dict) -> str:
    plan_ = report["plan"]
    steps = plan_["steps"]
    lines = [
        f"without the context cache: {report['plain']['seconds']:.3f} s for {steps} steps",
        f"with the context cache:    {report['cached']['seconds']:.3f} s for {steps} steps"
        f"{' (offloaded: host memory, streamed in per layer)' if report.get('cache_offload') else ''}",
        f"speed-up: {report['speedup']:.2f}x at {steps} steps (wall clock; from the per-step medians, "
        f"which a stalled step does not move: {report['median_speedup']:.2f}x)",
    ]
    if "projected_speedup" in report:
        lines.append(
            f"projected to {report['target_steps']} steps from the per-step times: "
            f"{report['projected_speedup']:.2f}x"
        )
    lines.append(
        f"max |cached - plain| = {report['max_abs_diff']:.3e} (max |output| {report['max_abs_output']:.3f}, "
        f"relative {report['relative_diff']:.1e})"
    )
    goal = f"goal: >= {GOAL_SPEEDUP}x at 50 steps, Wan 1.3B on a GPU"
    if plan_["model"] != GOAL_MODEL or not plan_["device"].startswith("cuda"):
        lines.append(f"{goal}; this run ({plan_['model']} on {plan_['device']}) does not measure it")
    else:
        measured = report["speedup"] if steps == 50 else report.get("projected_speedup", report["speedup"])
        how = "measured" if steps == 50 else f"projected from {steps} steps"
        lines.append(f"{goal}: {measured:.2f}x ({how}){'' if measured >= GOAL_SPEEDUP else '  NOT MET'}")
    return "\n".join(lines)
