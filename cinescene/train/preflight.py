"""Before any rank starts: the weights a run starts from, and ``cinescene train --dry-run``.

The weight rule (``model.init``). ``pretrained`` (the default) fine-tunes the
Wan2.1 DiT from ``model.pretrained`` and, when the model builds VGGT,
loads ``model.scene.vggt.weights``: `cinescene train` refuses to start, in
one line naming the unset keys, while either is missing, so a run meant to
fine-tune never trains a random DiT with a frozen random VGGT by accident.
``random`` trains from random initialisation on purpose (the tiny model and
the tests: ``configs/model/tiny.yaml`` says so) and rank 0 warns once at a
fresh start.

The dry run validates what a run checks up to building the DeepSpeed engine,
without data and without allocating the model: config, the weight rule, the
batch arithmetic for the world size, sequence parallelism against the heads,
the model built on the meta device (parameter counts, whether ZeRO-3 builds
it partitioned), each weight file's tensor names and shapes against the model
(headers only: no tensor data is read), and the DeepSpeed config (its ZeRO
section parsed by DeepSpeed's own schema), and the checkpoint the run would
start from, chosen as a real start chooses it (``checkpoint.resume``, every
file checked against its manifest, fallback past damaged ones) and checked
against the model; nothing in the checkpoint directory is changed. The data is
reported, not required: a dry run is for checking a config before the data is
in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from cinescene.config.base import ConfigError
from cinescene.config.model import ModelConfig
from cinescene.config.schema import CineSceneConfig
from cinescene.data import storage
from cinescene.data.ensure import MANIFEST, check_dataset
from cinescene.distributed.batching import plan_batch
from cinescene.distributed.spawn import check_local_ranks
from cinescene.errors import CineSceneError
from cinescene.eval.heldout import check_present
from cinescene.hub import resolve_weights
from cinescene.log import get_logger
from cinescene.sampling.spec import DataSpec, training_manifest

_log = get_logger("train")


def check_initial_weights(model: ModelConfig) -> None:
    """One-line CineSceneError when ``model.init=pretrained`` and a weight path is unset or absent."""
    if model.init == "random":
        return
    paths = {f"model.{key}": path for key, path in model.weight_paths().items()}
    unset = [key for key, path in paths.items() if not path]
    if unset:
        raise CineSceneError(
            f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} unset: "
            "model.init=pretrained fine-tunes from pretrained weights; set "
            f"{'it to the weight file' if len(unset) == 1 else 'them to the weight files'}, or set "
            "model.init=random to train from random initialisation on purpose"
        )
    # A repo id missing from the Hugging Face cache raises its own line (the id and the cache directory).
    absent = [f"{key}={path}" for key, path in paths.items() if not resolve_weights(path, key).exists()]
    if absent:
        raise CineSceneError(f"weights not found: {', '.join(absent)}")


def check_patch_grid(cfg: CineSceneConfig) -> str | None:
    """ConfigError(model.patch_size) when the DiT's patch does not tile the data's latent grid (video and
    scene latents), read from the training data's manifest, or from ``data.synth`` when the run generates its
    data; returns a description of the grid (None when the data is neither there nor to be generated: the
    data check says so). Every start runs it before any rank, W&B run or file of the run is made."""
    manifest = training_manifest(cfg)
    if manifest is not None:
        spec = DataSpec.from_manifest(manifest, cfg.data.scene_images, cfg.data.pixel_pool)
    elif cfg.data.generate:
        synth = cfg.data.synth
        spec = DataSpec(
            {"name": "none"},
            synth.frames,
            tuple(synth.size),
            synth.scene_images,
            tuple(synth.size),
            cfg.data.pixel_pool,
            "data.synth",
        )
    else:
        return None
    _, frames, height, width = spec.latent_shape(cfg.model.in_dim)
    scene = [s // spec.spatial_stride for s in spec.scene_size]
    pt, ph, pw = cfg.model.patch_size
    if frames % pt or height % ph or width % pw or scene[0] % ph or scene[1] % pw:
        raise ConfigError(
            "model.patch_size",
            f"{list(cfg.model.patch_size)} does not tile the data's latent grid: {frames} frames x "
            f"{height}x{width}, scene images {scene[0]}x{scene[1]} ({spec.source}); each size must be a "
            "multiple of its patch size",
        )
    return f"patch {list(cfg.model.patch_size)} tiles {frames} x {height}x{width} latents ({spec.source})"


def warn_random_init(model: ModelConfig) -> None:
    """The once-per-run warning (rank 0, fresh start) that ``model.init=random`` trains from scratch."""
    if model.init == "random":
        _log.warning(
            "model.init=random: training %s from random initialisation (no pretrained weights are loaded)",
            model.name,
        )


def warn_if_it_will_not_fit(cfg: CineSceneConfig, world_size: int) -> None:
    """Rank 0, before the engine is built: one warning line when cinescene.plan says the configured layout
    will not fit the GPU this process sees (nothing on a CPU, whose memory the plan does not model)."""
    import torch

    if not torch.cuda.is_available():
        return
    from cinescene.plan import fit_warning

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    try:
        warning = fit_warning(cfg, world_size, props.total_memory, props.name)
    except Exception as exc:  # the check is advice: a failure of its own must not stop the run
        _log.warning(
            "the memory plan could not be checked (%s: %s); training anyway", type(exc).__name__, exc
        )
        return
    if warning:
        _log.warning("%s", warning)


def planned_checkpoint_bytes(cfg: CineSceneConfig, world_size: int, rank: int) -> int | None:
    """What rank ``rank`` writes into one checkpoint by cinescene.plan (checkpoint.async's host copy), or None
    when the plan cannot model this config (the measured figure is checked once the engine is built)."""
    from cinescene.plan import checkpoint_bytes

    try:
        return checkpoint_bytes(cfg, world_size, rank)
    except Exception as exc:  # the plan is advice here: the measured check still guards the copy
        _log.debug("no planned checkpoint size (%s: %s)", type(exc).__name__, exc)
        return None


@dataclass
class Check:
    what: str
    result: str
    ready: bool = True  # False only for the data, which a dry run reports but does not require


def dry_run(cfg: CineSceneConfig, world_size: int, local_ranks_key: str | None = None) -> list[Check]:
    """Every check up to building the engine (see the module doc), in the real launch's order; raises at the
    first failure. ``local_ranks_key``: the flag or key naming the world size when its ranks would be spawned
    on this machine (no launcher): they must fit it, as the real launch requires."""
    from cinescene.models import build_model
    from cinescene.models.flops import parameter_counts

    from .engine import deepspeed_config, use_zero_init

    checks = [Check("config", "valid")]
    check_initial_weights(cfg.model)
    checks.append(
        Check(
            "initialisation",
            "random (rank 0 will warn)"
            if cfg.model.init == "random"
            else "pretrained: " + ", ".join(f"model.{k}" for k in cfg.model.weight_paths()),
        )
    )
    grid = check_patch_grid(cfg)
    if local_ranks_key is not None:
        check_local_ranks(world_size, cfg.parallel.backend, local_ranks_key)
    plan = plan_batch(cfg.train, world_size, cfg.parallel.sequence)
    checks.append(
        Check(
            "batch",
            f"micro {plan.micro_batch_size} x accumulation {plan.grad_accum} x data-parallel "
            f"{plan.dp_size} = {plan.global_batch_size} (world size {world_size}, "
            f"sequence parallel {cfg.parallel.sequence})",
        )
    )
    if cfg.parallel.sequence > 1 and cfg.model.num_heads % cfg.parallel.sequence:
        raise CineSceneError(
            f"parallel.sequence={cfg.parallel.sequence} does not divide the "
            f"{cfg.model.num_heads} attention heads"
        )

    if grid is not None:
        checks.append(Check("latent grid", grid))

    model = build_model(cfg.model, device="meta")  # nothing allocated, nothing loaded
    counts = parameter_counts(model)
    zero_init = use_zero_init(cfg, lambda: counts["total"])
    checks.append(
        Check(
            "model",
            f"{cfg.model.name} on the meta device: {counts['total']:,} parameters, "
            f"{counts['trainable']:,} trainable"
            + (", built partitioned under deepspeed.zero.Init" if zero_init else ""),
        )
    )
    checks += _check_weight_files(cfg.model, model)

    largest = max((p.numel() for p in model.parameters() if p.requires_grad), default=0)
    ds_config = deepspeed_config(cfg, plan, largest)
    check_deepspeed_config(ds_config, plan)
    zero = ds_config["zero_optimization"]
    offload = [name for name in ("offload_optimizer", "offload_param") if name in zero]
    checks.append(
        Check(
            "deepspeed",
            f"ZeRO-{zero['stage']}, {cfg.train.precision}, train batch "
            f"{ds_config['train_batch_size']} = {ds_config['train_micro_batch_size_per_gpu']}"
            f" x {ds_config['gradient_accumulation_steps']} x {plan.dp_size}"
            + (f", {' and '.join(offload)} to cpu" if offload else "")
            + f", activation checkpointing {'on' if cfg.model.activation_checkpointing else 'off'}",
        )
    )
    checks.append(_start_status(cfg, model, world_size))
    checks.append(_data_status(cfg))
    if cfg.eval.every_steps:
        checks.append(_eval_data_status(cfg))
    return checks


def _check_weight_files(model_cfg: ModelConfig, model) -> list[Check]:
    """Each weight file's names and shapes against the (meta) model; a misfit raises its report."""
    from cinescene.models.vggt import load_vggt_weights
    from cinescene.models.weights import load_pretrained

    if model_cfg.init == "random":
        return []
    checks = []
    report = load_pretrained(
        model,
        model_cfg.pretrained,
        fmt=model_cfg.pretrained_format,
        strict=model_cfg.strict_load,
        check_only=True,
    )
    # VGGT's tensors are CineScene-module keys to the DiT checkpoint: they come from their own file.
    fresh = [k for k in report.fresh if not k.startswith("scene_encoder.vggt.")]
    checks.append(Check("model.pretrained", _fit(report, fresh)))
    if model_cfg.builds_vggt():
        report = load_vggt_weights(model.scene_encoder.vggt, model_cfg.scene.vggt.weights, check_only=True)
        checks.append(Check("model.scene.vggt.weights", _fit(report, report.fresh)))
    return checks


def _fit(report, fresh: list[str]) -> str:
    parts = [f"{report.source}: {len(report.loaded)} tensors match by name and shape"]
    if fresh:
        parts.append(f"{len(fresh)} new-module tensors start as initialised")
    for label, keys in (
        ("missing", report.missing),
        ("unexpected", report.unexpected),
        ("mis-shaped", report.mismatched),
    ):
        if keys:  # only with model.strict_load=false: a partial fit is allowed, say what would not load
            parts.append(f"{len(keys)} {label}")
    return ", ".join(parts)


def check_deepspeed_config(ds_config: dict, plan) -> None:
    """The batch identity DeepSpeed asserts at start-up; the ZeRO section through DeepSpeed's own schema."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    batch = (
        ds_config["train_micro_batch_size_per_gpu"] * ds_config["gradient_accumulation_steps"] * plan.dp_size
    )
    if batch != ds_config["train_batch_size"]:
        raise CineSceneError(f"DeepSpeed train batch {ds_config['train_batch_size']} != {batch}")
    try:
        DeepSpeedZeroConfig(**ds_config["zero_optimization"])
    except Exception as exc:  # pydantic's ValidationError: name the first problem in one line
        raise CineSceneError(
            "DeepSpeed rejects the ZeRO settings: " + " ".join(str(exc).splitlines()[:3])
        ) from None


def _start_status(cfg: CineSceneConfig, model, world_size: int) -> Check:
    """Where a real start would begin (:meth:`CheckpointManager.choose`, without the start-up repairs) and
    whether that checkpoint fits the model (names, shapes, ZeRO stage, world size)."""
    from cinescene.ckpt.locate import checkpoints_dir
    from cinescene.ckpt.record import read_record

    from .checkpoint import CheckpointManager, check_compatible, parameter_manifest

    root = checkpoints_dir(cfg)
    path = CheckpointManager(root, cfg.checkpoint, rank=0, world_size=1).choose(cfg.checkpoint.resume)
    if path is None:
        return Check("checkpoint", f"fresh start ({root} holds no checkpoint)")
    record = read_record(path)
    params, trainable = parameter_manifest(model)
    check_compatible(
        record,
        path,
        params=params,
        trainable=trainable,
        zero_stage=cfg.parallel.zero_stage,
        world_size=world_size,
    )
    if record.step >= cfg.train.max_steps:
        return Check("checkpoint", f"{path} is at step {record.step} of train.max_steps: nothing to train")
    resharded = f", resharded from {record.world_size} ranks" if record.world_size != world_size else ""
    return Check("checkpoint", f"resumes from {path} (step {record.step}, files verified{resharded})")


def _data_status(cfg: CineSceneConfig) -> Check:
    try:
        shards = check_dataset(cfg.data)
    except CineSceneError as exc:
        return Check("data", f"not ready: {exc}", ready=False)
    if storage.exists(shards / MANIFEST):
        return Check("data", f"{shards}: {MANIFEST} present")
    return Check(
        "data", f"{shards}: absent; the run renders synthetic clips there first (data.generate=true)"
    )


def _eval_data_status(cfg: CineSceneConfig) -> Check:
    """The eval hook's held-out shards: reported like the training data (their fit to the model is checked
    when the run starts, against the training data's manifest)."""
    try:
        check_present(cfg)
    except CineSceneError as exc:
        return Check("eval data", f"not ready: {exc}", ready=False)
    return Check(
        "eval data",
        f"{cfg.eval.data}: manifest.json present; every {cfg.eval.every_steps} steps, "
        f"{cfg.eval.num_samples or 'all'} held-out samples, {cfg.eval.sample_steps} sampling "
        f"steps, metrics {', '.join(cfg.eval.metrics)}",
    )


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.what) for c in checks)
    return "".join(f"{c.what:<{width}}  {c.result}\n" for c in checks)


__all__ = [
    "Check",
    "check_deepspeed_config",
    "check_initial_weights",
    "check_patch_grid",
    "dry_run",
    "format_checks",
    "warn_if_it_will_not_fit",
    "warn_random_init",
]
