"""Checkpoints (DESIGN.md §4): atomic step directories, a `latest` pointer, retention, resume.

Layout of ``<checkpoint.dir>`` (default ``<run.dir>/checkpoints``)::

    step_00000040/
        zero/                     DeepSpeed engine.save_checkpoint(tag="zero"): ZeRO shards
        rank_states/rank_00000.pt one per rank: RNG states, EMA shard, callback state
        config.yaml               the resolved config, secrets scrubbed
        trainer_state.json        step, consumed samples, batch/world layout, W&B run id,
                                  parameter names/shapes; written last
    latest                        "step_00000040\\n", replaced atomically

Save protocol: everything is written into ``.tmp-step_XXXXXXXX``; after a
barrier (every rank has closed its files) rank 0 writes the trainer state,
fsyncs the tree, renames the directory to ``step_XXXXXXXX`` (the commit
point), fsyncs the parent, then replaces ``latest`` (write + fsync +
``os.replace``) and applies retention. So a ``step_*`` directory is always
complete and ``latest`` never names a partial one. At start, leftover
``.tmp-*`` directories of a killed save are removed, and ``latest`` is moved
forward if a complete directory is newer than it (a save killed between its
rename and the pointer update).

Retention keeps the newest ``keep_last`` checkpoints, every step divisible by
``keep_every`` (0 = none), and always ``latest``'s target; a directory is
renamed to ``.tmp-delete-*`` before it is removed, so a half-deleted
checkpoint never looks like a checkpoint.

Frozen parameters (the VGGT encoder) are not saved: they come from the
model's pretrained weights at build time.

``CINESCENE_TEST_CRASH_AT=<point>[@<step>]`` (tests only) SIGKILLs the whole
process group at a named point of a save: tmp_created, after_shards,
after_rank_states, before_rename, after_rename, after_latest.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
import torch.distributed as dist

from cinescene.config.checkpoint import CheckpointConfig
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .callbacks import Callback, StepResult, TrainState

_log = get_logger("train.checkpoint")

STEP_DIR = re.compile(r"^step_(\d{8})$")
TMP_PREFIX = ".tmp-"
DELETE_PREFIX = ".tmp-delete-"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
RANK_STATES = "rank_states"
ZERO_TAG = "zero"
UNIVERSAL_TAG = "zero_universal"
CONFIG_FILE = "config.yaml"
FORMAT_VERSION = 1
CRASH_ENV = "CINESCENE_TEST_CRASH_AT"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_state_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def _crash_point(point: str, step: int) -> None:
    """Test hook: die like `kill -9` of the whole job at ``point`` (see module doc)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and (not at or int(at) == step):
        os.killpg(os.getpgid(0), signal.SIGKILL)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def step_of(path: Path) -> Optional[int]:
    match = STEP_DIR.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    return step_of(path) is not None and (path / TRAINER_STATE).is_file()


def read_trainer_state(path: Path) -> Dict[str, Any]:
    try:
        return json.loads((Path(path) / TRAINER_STATE).read_text())
    except FileNotFoundError:
        raise CineSceneError(f"{path} is not a checkpoint directory (no {TRAINER_STATE})") from None
    except json.JSONDecodeError as exc:
        raise CineSceneError(f"{path / TRAINER_STATE} is corrupt: {exc}") from None


@dataclass
class LoadedCheckpoint:
    path: Path
    trainer_state: Dict[str, Any]
    rank_state: Optional[Dict[str, Any]]               # None when this rank has no file (other world size)
    all_rank_states: Callable[[], List[Dict[str, Any]]] = field(repr=False, default=list)


class CheckpointManager:
    def __init__(self, root: str | Path, cfg: CheckpointConfig, *, rank: int, world_size: int):
        self.root = Path(root)
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size

    # ---------------------------------------------------------------- queries
    def complete_steps(self) -> List[Path]:
        """Complete step directories, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.iterdir() if p.is_dir() and is_complete(p)), key=step_of)

    def latest(self) -> Optional[Path]:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        target = self.root / pointer.read_text().strip()
        return target if is_complete(target) else None

    # ---------------------------------------------------------------- startup
    def recover(self) -> None:
        """Rank 0, before anything else: drop leftovers of a killed save and point `latest` at the newest."""
        if self.rank != 0 or not self.root.is_dir():
            return
        for leftover in self.root.glob(f"{TMP_PREFIX}*"):
            _log.warning("removing %s, left by a save or deletion that did not finish", leftover)
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        complete = self.complete_steps()
        current = self.latest()
        if complete and (current is None or step_of(complete[-1]) > step_of(current)):
            if (self.root / LATEST).exists():
                _log.warning("`latest` named %s; %s is complete and newer (its save was killed before the "
                             "pointer moved): pointing `latest` at it", current and current.name, complete[-1].name)
            _write_atomic(self.root / LATEST, complete[-1].name + "\n")

    def resolve_resume(self, resume: str) -> Optional[Path]:
        """The step directory to resume from, or None to start fresh (see checkpoint.resume)."""
        if resume == "never":
            if self.complete_steps():
                raise CineSceneError(f"checkpoint.resume=never but {self.root} already holds checkpoints; "
                                     "use a new run.dir (or checkpoint.resume=auto to continue)")
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if path.is_dir() and (path / LATEST).is_file():  # a checkpoints/ directory: take its latest
            path = path / (path / LATEST).read_text().strip()
        if not path.is_dir():
            raise CineSceneError(f"checkpoint.resume={resume}: no such checkpoint directory")
        read_trainer_state(path)
        newer = [p.name for p in self.complete_steps() if step_of(p) > (step_of(path) or -1)]
        if path.resolve().parent == self.root.resolve() and newer:
            raise CineSceneError(f"checkpoint.resume={resume} would rewind this run, but newer checkpoints "
                                 f"exist in {self.root} ({', '.join(newer)}); resume into a new run.dir")
        return path

    # ------------------------------------------------------------------- save
    def save(self, engine, step: int, trainer_state: Mapping[str, Any], rank_state: Mapping[str, Any],
             config_yaml: str) -> Path:
        """Collective: every rank calls it. Returns the committed step directory."""
        name = step_dir_name(step)
        final = self.root / name
        tmp = self.root / f"{TMP_PREFIX}{name}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / RANK_STATES).mkdir(parents=True)
            _crash_point("tmp_created", step)
        _barrier()
        engine.save_checkpoint(str(tmp), tag=ZERO_TAG, save_latest=False, exclude_frozen_parameters=True)
        _crash_point("after_shards", step)
        with open(tmp / RANK_STATES / rank_state_name(self.rank), "wb") as handle:
            torch.save(dict(rank_state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        _crash_point("after_rank_states", step)
        _barrier()
        if self.rank == 0:
            self._commit(tmp, final, step, trainer_state, config_yaml)
        _barrier()
        return final

    def _commit(self, tmp: Path, final: Path, step: int, trainer_state: Mapping[str, Any], config_yaml: str) -> None:
        (tmp / CONFIG_FILE).write_text(config_yaml)
        state = {"format": FORMAT_VERSION, **trainer_state}
        (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        _fsync_tree(tmp)
        _crash_point("before_rename", step)
        if final.exists():  # only after a rewind; never expected in auto-resume
            stale = self.root / f"{DELETE_PREFIX}{final.name}"
            os.rename(final, stale)
            shutil.rmtree(stale)
        os.rename(tmp, final)
        _fsync_path(self.root)
        _crash_point("after_rename", step)
        _write_atomic(self.root / LATEST, final.name + "\n")
        _crash_point("after_latest", step)
        _log.info("saved checkpoint %s", final)
        self.apply_retention()

    def apply_retention(self) -> List[Path]:
        """Delete checkpoints outside the retention policy (rank 0); returns the deleted paths."""
        complete = self.complete_steps()
        keep = set(complete[-self.cfg.keep_last:])
        if self.cfg.keep_every:
            keep |= {p for p in complete if step_of(p) % self.cfg.keep_every == 0}
        latest = self.latest()
        if latest is not None:
            keep.add(latest)
        deleted = []
        for path in complete:
            if path not in keep:
                doomed = self.root / f"{DELETE_PREFIX}{path.name}"
                os.rename(path, doomed)
                shutil.rmtree(doomed)
                deleted.append(path)
        if deleted:
            _log.info("retention removed %s", ", ".join(p.name for p in deleted))
        return deleted

    # ------------------------------------------------------------------- load
    def load(self, engine, path: Path) -> LoadedCheckpoint:
        """Load ZeRO shards into ``engine`` and this rank's state (collective).

        At another world size the shards go through DeepSpeed's universal checkpoint
        (see :meth:`_load_resharded`; the engine must be built with ``load_universal``);
        per-rank states then do not apply (``rank_state`` is None).
        """
        path = Path(path)
        state = read_trainer_state(path)
        resharded = state.get("world_size") != self.world_size
        if resharded:
            self._load_resharded(engine, path)
        else:
            engine.load_checkpoint(str(path), tag=ZERO_TAG, load_module_strict=False, load_optimizer_states=True,
                                   load_lr_scheduler_states=False)
        own = path / RANK_STATES / rank_state_name(self.rank)
        rank_state = (torch.load(own, map_location="cpu", weights_only=False)
                      if own.is_file() and not resharded else None)

        def all_rank_states() -> List[Dict[str, Any]]:
            return [torch.load(p, map_location="cpu", weights_only=False)
                    for p in sorted((path / RANK_STATES).glob("rank_*.pt"))]

        _log.info("resumed from %s (step %d, %d samples consumed)%s", path, state["step"], state["consumed_samples"],
                  f", resharded from {state.get('world_size')} to {self.world_size} ranks" if resharded else "")
        return LoadedCheckpoint(path, state, rank_state, all_rank_states)

    def _load_resharded(self, engine, path: Path) -> None:
        """Rank 0 converts the ZeRO shards to DeepSpeed's universal (world-size free) layout in a
        temporary directory next to our checkpoints; every rank loads its new partition from there."""
        work = self.root / f"{TMP_PREFIX}universal-{path.name}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if work.exists():
                shutil.rmtree(work)
            _log.info("converting %s (%s ranks) to a universal checkpoint for %d ranks", path,
                      read_trainer_state(path).get("world_size"), self.world_size)
            cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                   str(path / ZERO_TAG), "--output_folder", str(work / UNIVERSAL_TAG), "--num_extract_workers", "1",
                   "--num_merge_workers", "1", "--inject_missing_state"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise CineSceneError(f"converting {path} for {self.world_size} ranks failed: {tail[0]}")
        _barrier()
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in inner.param_groups]
        engine.load_checkpoint(str(work), tag=UNIVERSAL_TAG, load_module_strict=False, load_optimizer_states=True,
                               load_lr_scheduler_states=False)
        # DeepSpeed 0.19's universal load gives every parameter group the first group's settings
        # (our no-decay group would decay) and one shared `step` tensor (AdamW then advances it
        # once per group, skewing bias correction): restore ours and unshare the counters.
        for group, settings in zip(inner.param_groups, hyper):
            group.update(settings)
        for state in inner.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
        _barrier()
        if self.rank == 0:
            shutil.rmtree(work)


def check_compatible(state: Mapping[str, Any], path: Path, *, params: Mapping[str, List[int]],
                     trainable: List[str], zero_stage: int) -> None:
    """One-line errors, before DeepSpeed touches anything, when the checkpoint cannot load here.

    Another world size is fine (resharded on load); another model or ZeRO stage is not.
    """
    saved = {k: list(v) for k, v in state.get("params", {}).items()}
    current = {k: list(v) for k, v in params.items()}
    missing = sorted(set(saved) - set(current))
    unexpected = sorted(set(current) - set(saved))
    reshaped = sorted(k for k in set(saved) & set(current) if saved[k] != current[k])
    changed_trainable = sorted(set(state.get("trainable", trainable)) ^ set(trainable))
    if missing or unexpected or reshaped or changed_trainable:
        parts = []
        if reshaped:
            parts.append("shape differs: " + _names([f"{k} {saved[k]} vs {current[k]}" for k in reshaped]))
        if missing:
            parts.append("only in the checkpoint: " + _names(missing))
        if unexpected:
            parts.append("only in this model: " + _names(unexpected))
        if changed_trainable and not (missing or unexpected or reshaped):
            parts.append("trainable set differs: " + _names(changed_trainable))
        raise CineSceneError(f"checkpoint {path} was saved for another model config: " + "; ".join(parts))
    if state.get("zero_stage") != zero_stage:
        raise CineSceneError(f"checkpoint {path} holds ZeRO-{state.get('zero_stage')} shards; this run uses "
                             f"ZeRO-{zero_stage} (parallel.zero_stage): set it back to resume")


def _names(items: List[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class CheckpointCadence(Callback):
    """Requests a save every ``checkpoint.every_steps`` steps and after the last one (``save_final``)."""

    name = "checkpoint_cadence"

    def __init__(self, cfg: CheckpointConfig):
        self.cfg = cfg

    def on_step_end(self, state: TrainState, result: StepResult) -> None:
        if self.cfg.every_steps and result.step % self.cfg.every_steps == 0:
            state.request_save("every_steps")
        if self.cfg.save_final and result.step >= state.max_steps:
            state.request_save("final")


def consolidated_state_dict(step_dir: str | Path) -> Dict[str, torch.Tensor]:
    """The trainable weights of a step directory as full fp32 tensors (DeepSpeed's zero_to_fp32)."""
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress chatter
        return get_fp32_state_dict_from_zero_checkpoint(str(step_dir), tag=ZERO_TAG)


def weights_digest(step_dir: str | Path) -> str:
    """SHA-256 over the consolidated weights (names, shapes and bytes, in name order): equal = identical."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(consolidated_state_dict(step_dir).items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
