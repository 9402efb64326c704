"""``cinescene ckpt export``: a checkpoint as consolidated safetensors in Wan's or diffusers' layout.

An export directory describes itself::

    config.json                          the base DiT's config (Wan's WanModel / diffusers'
                                         WanTransformer3DModel): either loads it with from_pretrained
    diffusion_pytorch_model.safetensors  the base DiT in that layout's key names; above --max-shard-size
      (or -00001-of-0000N + .safetensors.index.json): shards and an index, as both projects write them
    cinescene_modules.safetensors        what CineScene adds (camera encoders and projectors, the scene
                                         encoder: VGGT, projector, null token), our key names; sharded alike
    cinescene.json                       format, layout, dtype, EMA or not, step, the source checkpoint,
                                         the resolved model config, the file lists
    cinescene_config.yaml                the run's config as its checkpoint saved it (what `cinescene
                                         sample` and `eval` need besides the weights: data, eval settings)

Streaming: tensors are produced one at a time (gathered from the ZeRO shards
by byte ranges, or the EMA slices from every rank file) and written shard by
shard, so the peak resident memory is about one output shard plus the
largest tensor, not the model; :func:`export` measures it. Parameters the
run did not train (the frozen VGGT, or any frozen DiT part) come from where
the trainer got them: ``model.pretrained`` / ``model.scene.vggt.weights``,
read lazily, or, for a run without those files, the initialisation under
``run.seed``.

:func:`load_exported_model` builds our :class:`~cinescene.models.CineSceneModel`
from an export directory with strict key checks (the sampling CLI's loader).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import save_file

from cinescene import rng
from cinescene.config import from_container
from cinescene.config.loading import read_yaml
from cinescene.config.paths import check_output_location
from cinescene.durable import fsync_path, fsync_tree
from cinescene.errors import CineSceneError
from cinescene.host_memory import current_rss_bytes, peak_rss_bytes, reset_peak
from cinescene.log import get_logger
from cinescene.models import build_model
from cinescene.models.key_mapping import detect_layout, diffusers_to_wan_key, wan_to_diffusers_key
from cinescene.models.weights import TensorSource, assign_state_dict, is_cinescene_extension, open_checkpoint
from cinescene.secrets import scrub, secret_values

from .config import checkpoint_config, config_from_data
from .layout import CONFIG_FILE, RANK_STATES, ZERO_TAG, refuse_inside_checkpoint
from .locate import DESCRIPTION, EXPORT_FORMAT, EXPORT_VERSION, RUN_CONFIG, read_description
from .manifest import read_manifest
from .record import params_mismatch
from .weights import TrainedWeights

_log = get_logger("ckpt.export")

FORMATS = ("wan", "diffusers")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BASE_STEM = "diffusion_pytorch_model"  # both Wan's releases and diffusers name the DiT weights this way
MODULES_STEM = "cinescene_modules"
DEFAULT_MAX_SHARD = 5 * 10**9  # diffusers' default max_shard_size, "5GB"
VGGT_PREFIX = "scene_encoder.vggt."


def is_cinescene_key(name: str) -> bool:
    """Parameters CineScene adds to the Wan DiT: they go to the modules file, never to the base DiT's."""
    return is_cinescene_extension(name)


# --------------------------------------------------------------------------- sharded writer
class ShardWriter:
    """Tensors in, safetensors shards out: a new shard whenever the next tensor would pass ``max_bytes``."""

    def __init__(self, out: Path, stem: str, max_bytes: int, dtype: torch.dtype):
        self.out, self.stem, self.max_bytes, self.dtype = out, stem, max_bytes, dtype
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.to(self.dtype).contiguous()
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out / f".{self.stem}-part{len(self.shards):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Name the shards (one file, or -0000i-of-0000N plus an index); returns the files written."""
        if self.pending or not self.shards:
            self._flush()
        if len(self.shards) == 1:
            name = f"{self.stem}.safetensors"
            os.replace(self.shards[0][0], self.out / name)
            return [name]
        count, weight_map, names = len(self.shards), {}, []
        for index, (path, keys) in enumerate(self.shards, start=1):
            name = f"{self.stem}-{index:05d}-of-{count:05d}.safetensors"
            os.replace(path, self.out / name)
            weight_map.update(dict.fromkeys(keys, name))
            names.append(name)
        index_name = f"{self.stem}.safetensors.index.json"
        (self.out / index_name).write_text(
            json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
        return names + [index_name]


# ------------------------------------------------------------------------ frozen parameters
class FrozenWeights:
    """The parameters a run did not train, from where the trainer took them (see the module doc)."""

    def __init__(self, cfg, names: Iterable[str]):
        self.cfg = cfg
        self.names = set(names)
        self._files = contextlib.ExitStack()
        self._sources: dict[str, Callable[[str], torch.Tensor]] = {}
        self._initialised: dict[str, torch.Tensor] | None = None

    def _source(self, kind: str) -> Callable[[str], torch.Tensor] | None:
        if kind not in self._sources:
            model = self.cfg.model
            path = model.pretrained if kind == "base" else model.scene.vggt.weights
            if not path:
                self._sources[kind] = None
            else:
                tensors, _ = self._files.enter_context(open_checkpoint(path))
                if kind == "base":
                    layout = (
                        detect_layout(tensors.keys())
                        if model.pretrained_format == "auto"
                        else model.pretrained_format
                    )
                    if layout == "diffusers":
                        tensors = tensors.renamed(diffusers_to_wan_key)
                    self._sources[kind] = tensors.read
                else:
                    self._sources[kind] = lambda name, t=tensors: t.read(name[len(VGGT_PREFIX) :])
        return self._sources[kind]

    def tensor(self, name: str) -> torch.Tensor:
        kind = "vggt" if name.startswith(VGGT_PREFIX) else "base" if not is_cinescene_key(name) else None
        source = self._source(kind) if kind else None
        if source is not None:
            return source(name)
        if self._initialised is None:
            self._initialised = self._initialise()
        return self._initialised[name]

    def _initialise(self) -> dict[str, torch.Tensor]:
        """The frozen parameters as the trainer built them: the model under ``run.seed``, its files loaded."""
        _log.info(
            "frozen parameters without a weights file: rebuilding them as initialised under run.seed=%d",
            self.cfg.run.seed,
        )
        rng.seed_all(self.cfg.run.seed)
        model = build_model(self.cfg.model)
        return {name: param.detach() for name, param in model.named_parameters() if name in self.names}

    def close(self) -> None:
        self._files.close()


# ---------------------------------------------------------------------------- configs
def wan_config(model) -> dict:
    """Wan2.1's ``WanModel`` config (the keys its releases' config.json hold, plus the sizes it takes)."""
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "model_type": "t2v",
        "dim": model.dim,
        "ffn_dim": model.ffn_dim,
        "freq_dim": model.freq_dim,
        "in_dim": model.in_dim,
        "out_dim": model.out_dim,
        "num_heads": model.num_heads,
        "num_layers": model.num_layers,
        "text_len": model.text_len,
        "text_dim": model.text_dim,
        "patch_size": list(model.patch_size),
        "window_size": [-1, -1],
        "qk_norm": model.qk_norm,
        "cross_attn_norm": model.cross_attn_norm,
        "eps": model.eps,
    }


def diffusers_config(model) -> dict:
    """diffusers' ``WanTransformer3DModel`` config for the same DiT."""
    try:
        import diffusers

        version = diffusers.__version__
    except ImportError:
        version = "0.32.0"
    return {
        "_class_name": "WanTransformer3DModel",
        "_diffusers_version": version,
        "patch_size": list(model.patch_size),
        "num_attention_heads": model.num_heads,
        "attention_head_dim": model.dim // model.num_heads,
        "in_channels": model.in_dim,
        "out_channels": model.out_dim,
        "text_dim": model.text_dim,
        "freq_dim": model.freq_dim,
        "ffn_dim": model.ffn_dim,
        "num_layers": model.num_layers,
        "cross_attn_norm": model.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if model.qk_norm else None,
        "eps": model.eps,
        "image_dim": None,
        "added_kv_proj_dim": None,
        "rope_max_seq_len": 1024,
    }


# ------------------------------------------------------------------------------ export
@dataclass
class ExportReport:
    out: Path
    files: list[str]
    tensors: int
    bytes_written: int
    checkpoint_bytes: int  # the checkpoint files the export read (ZeRO shards, plus rank states with --ema)
    largest_tensor_bytes: int
    max_shard_bytes: int
    start_rss_bytes: int  # resident memory when the export started (the interpreter, torch, ...)
    peak_rss_bytes: int
    peak_is_process_lifetime: bool
    seconds: float


def _check_model_fits(cfg, step_dir: Path, params: dict[str, list[int]]) -> None:
    """The config's model has the checkpoint's parameters, shape for shape (built on the meta device)."""
    model = build_model(cfg.model, device="meta")
    parts = params_mismatch(params, {name: list(p.shape) for name, p in model.named_parameters()})
    if parts:
        raise CineSceneError(
            f"{step_dir}: the model of its config does not fit the parameters it recorded "
            f"({'; '.join(parts)})"
        )


def _checkpoint_bytes(step_dir: Path, ema: bool) -> int:
    files = read_manifest(step_dir) or {}
    parts = (f"{ZERO_TAG}/",) + ((f"{RANK_STATES}/",) if ema else ())
    listed = sum(r.size for name, r in files.items() if name.startswith(parts))
    return listed or sum(p.stat().st_size for p in (step_dir / ZERO_TAG).glob("*") if p.is_file())


def _work_dir(out: Path) -> Path:
    """A private directory next to ``out`` to write into (renamed to ``out`` when complete); leftovers of
    exports that were killed (their process is gone) are removed first."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CineSceneError(f"cannot create {out.parent} for --out: {exc.strerror}") from None
    prefix = f".{out.name}.tmp-export-"
    for leftover in out.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix) :]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(leftover, ignore_errors=True)
    work = out.parent / f"{prefix}{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    try:
        work.mkdir()
    except OSError as exc:
        raise CineSceneError(f"cannot write into {out.parent}: {exc.strerror}") from None
    return work


def export(
    path: Path | str,
    out: Path | str,
    *,
    fmt: str,
    ema: bool = False,
    dtype: str = "fp32",
    max_shard_size: int = DEFAULT_MAX_SHARD,
    overrides: Sequence[str] = (),
) -> ExportReport:
    """Write ``out`` (must not exist) from the checkpoint at ``path`` (run, checkpoints or step directory).

    ``overrides`` (KEY=VALUE) apply to the checkpoint's config as for ``cinescene sample``: an older run's
    masked values are given this way. The model they describe must be the one the checkpoint recorded.
    """
    if fmt not in FORMATS:
        raise CineSceneError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise CineSceneError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if max_shard_size <= 0:
        raise CineSceneError(f"--max-shard-size must be positive, got {max_shard_size}")
    out = Path(out)
    check_output_location(out, "--out")
    refuse_inside_checkpoint(out, "--out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CineSceneError(f"{out} already exists; choose another --out (an export never overwrites)")
    weights = TrainedWeights(path)
    cfg = checkpoint_config(weights.path, overrides)
    record = weights.record
    _check_model_fits(cfg, weights.path, record.params)
    trained = weights.names()  # checks every trainable parameter has shards before anything is written
    frozen = FrozenWeights(cfg, [n for n in record.params if n not in set(trained)])
    start_rss = current_rss_bytes()
    measured = reset_peak()
    started = time.perf_counter()
    work = _work_dir(out)
    target = DTYPES[dtype]
    base = ShardWriter(work, BASE_STEM, max_shard_size, target)
    modules = ShardWriter(work, MODULES_STEM, max_shard_size, target)
    largest, count, trained_set = 0, 0, set(trained)
    try:
        for name in record.params:
            tensor = weights.tensor(name, ema=ema) if name in trained_set else frozen.tensor(name)
            largest = max(largest, tensor.numel() * tensor.element_size())
            if is_cinescene_key(name):
                modules.add(name, tensor)
            else:
                base.add(wan_to_diffusers_key(name) if fmt == "diffusers" else name, tensor)
            count += 1
            del tensor
        files = base.finish() + modules.finish()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        frozen.close()
    model_config = diffusers_config(cfg.model) if fmt == "diffusers" else wan_config(cfg.model)
    (work / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")

    # The run's config as saved, masked again: a received checkpoint's config.yaml may hold a secret's value.
    run_config = read_yaml(weights.path / CONFIG_FILE)
    secrets = secret_values(config=run_config)
    (work / RUN_CONFIG).write_text(yaml.safe_dump(scrub(run_config, secrets), sort_keys=False))
    description = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "layout": fmt,
        "dtype": dtype,
        "ema": ema,
        "step": record.step,
        "consumed_samples": record.consumed_samples,
        "run_name": record.run_name,
        "source": str(weights.path.resolve()),
        "model": OmegaConf.to_container(OmegaConf.structured(cfg.model)),
        "base_files": [f for f in files if f.startswith(BASE_STEM)],
        "module_files": [f for f in files if f.startswith(MODULES_STEM)],
        "module_keys": sorted(n for n in record.params if is_cinescene_key(n)),
    }
    (work / DESCRIPTION).write_text(json.dumps(scrub(description, secrets), indent=2) + "\n")
    written = sum((work / f).stat().st_size for f in files)
    fsync_tree(work)  # every file and the directory on disk before the export is said to be done
    try:
        if out.exists():
            out.rmdir()  # empty (checked above): an export fills it or fails as a whole
        os.rename(work, out)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        raise CineSceneError(
            f"{out} appeared while exporting (another export?); nothing was written there"
        ) from None
    fsync_path(out.parent)
    return ExportReport(
        out=out,
        files=files + ["config.json", RUN_CONFIG, DESCRIPTION],
        tensors=count,
        bytes_written=written,
        checkpoint_bytes=_checkpoint_bytes(weights.path, ema),
        largest_tensor_bytes=largest,
        max_shard_bytes=max_shard_size,
        start_rss_bytes=start_rss,
        peak_rss_bytes=peak_rss_bytes(),
        peak_is_process_lifetime=not measured,
        seconds=time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------ loading
def _entry_file(export_dir: Path, files: list[str], stem: str) -> Path:
    index = f"{stem}.safetensors.index.json"
    return export_dir / (index if index in files else f"{stem}.safetensors")


def _export_files(export_dir: Path, description: dict) -> tuple[str, list[str], list[str]]:
    """The description's layout and file lists, checked (a hand-edited one is one line, not a KeyError)."""
    layout, base, modules = (description.get(k) for k in ("layout", "base_files", "module_files"))
    for name, files in (("base_files", base), ("module_files", modules)):
        if not (isinstance(files, list) and all(isinstance(f, str) and "/" not in f for f in files)):
            raise CineSceneError(f"{export_dir / DESCRIPTION} is corrupt: {name} is not a list of file names")
    if layout not in FORMATS:
        raise CineSceneError(f"{export_dir / DESCRIPTION} is corrupt: unknown layout {layout!r}")
    return layout, base, modules


def _model_config(export_dir: Path, description: dict, model_cfg, base_only: bool):
    """The model to build: ``model_cfg``, else the description's (received: read by the one config reader);
    weight files off (the export holds every weight), camera and scene off for ``base_only``."""
    if model_cfg is None:
        if not isinstance(description.get("model"), dict):
            raise CineSceneError(f"{export_dir / DESCRIPTION} is corrupt: no model config")
        model_cfg = config_from_data({"model": description["model"]}, (), export_dir / DESCRIPTION).model
    tree = OmegaConf.to_container(OmegaConf.structured(model_cfg))
    tree["pretrained"] = None
    tree["scene"]["vggt"]["weights"] = None
    if base_only:
        tree["scene"]["enabled"] = False
        tree["camera"]["enabled"] = False
    return from_container({"model": tree}).model


def load_exported_model(
    export_dir: Path | str,
    *,
    device=None,
    dtype: torch.dtype | None = None,
    base_only: bool = False,
    model_cfg=None,
):
    """Our CineSceneModel from an export directory (either layout), every key checked strictly.

    ``base_only``: the plain Wan DiT (camera and scene context off) from the base file alone, the model
    that Wan's and diffusers' loaders see in the same directory. ``model_cfg``: build this model config
    (e.g. the run's with another attention backend) instead of the one the export describes; the keys
    must still match exactly. Every name and shape is checked against the files' headers on a model
    built on the meta device before the real one is allocated: the config cannot make this allocate
    more than the files hold.
    """
    export_dir = Path(export_dir)
    description = read_description(export_dir)
    layout, base_files, module_files = _export_files(export_dir, description)
    cfg = _model_config(export_dir, description, model_cfg, base_only)
    with contextlib.ExitStack() as files:
        base, _ = files.enter_context(open_checkpoint(_entry_file(export_dir, base_files, BASE_STEM)))
        if layout == "diffusers":
            base = base.renamed(diffusers_to_wan_key)
        source = base
        if not base_only:
            extra, _ = files.enter_context(
                open_checkpoint(_entry_file(export_dir, module_files, MODULES_STEM))
            )
            both = set(base.keys()) & set(extra.keys())
            if both:
                raise CineSceneError(
                    f"{export_dir}: {sorted(both)[0]} is in both the base and the modules files"
                )
            source = TensorSource(
                {**base.shapes, **extra.shapes},
                lambda key: base.read(key) if key in base else extra.read(key),
            )
        shown = str(export_dir)
        assign_state_dict(build_model(cfg, device="meta"), source, strict=True, source=shown, check_only=True)
        model = build_model(cfg, device=device, load_weights=False)
        assign_state_dict(model, source, strict=True, source=shown)
    if dtype is not None:
        model.to(dtype)
    return model.eval()
