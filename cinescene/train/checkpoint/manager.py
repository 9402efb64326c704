"""The checkpoint directory of a run: atomic saves, `latest`, recovery, retention, choosing what to resume.

Save protocol (every rank calls :meth:`CheckpointManager.save`): everything
is written into ``.tmp-step_XXXXXXXX``, the ZeRO shards through our
checkpoint engine (each file hashed as it is written), each rank's state as
safetensors; each rank lists its files in a manifest part. After a barrier
rank 0 writes the config and the trainer record, merges the parts into
``manifest.json``, fsyncs the tree, renames the directory to
``step_XXXXXXXX`` (the commit point), fsyncs the parent, then replaces
``latest`` (write + fsync + ``os.replace``) and applies retention. So a
``step_*`` directory is always complete and ``latest`` never names a
partial one. DeepSpeed's recovery scripts (``zero_to_fp32.py``, copied into
every save) are removed: a checkpoint holds data, not code.

At start (:meth:`CheckpointManager.recover`, rank 0), leftovers of a killed
save (``.tmp-*``) are removed, an unusable `latest` is replaced with one
warning, and `latest` moves forward when a complete directory is newer
(a save killed between its rename and the pointer update).
:meth:`CheckpointManager.choose` then picks the checkpoint to resume: the
newest one whose files are all there at their recorded sizes and whose
pickles hold data only; each one skipped costs one warning line naming the
file.

Retention keeps the newest ``keep_last`` checkpoints, every step divisible by
``keep_every`` (0 = none), and always ``latest``'s target; a directory is
renamed to ``.tmp-delete-*`` before it is removed, so a half-deleted
checkpoint never looks like a checkpoint.

``CINESCENE_TEST_CRASH_AT=<point>[@<step>]`` (tests only) SIGKILLs the whole
process group at a named point of a save: tmp_created, after_shards,
after_rank_states, before_rename, after_rename, after_latest.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cinescene.ckpt import ds_engine, manifest
from cinescene.ckpt.errors import DamagedCheckpointError, UnsafeCheckpointError
from cinescene.ckpt.layout import (
    CHECKPOINTS,
    CONFIG_FILE,
    DELETE_PREFIX,
    LATEST,
    RANK_STATES,
    TMP_PREFIX,
    TRAINER_STATE,
    ZERO_TAG,
    inside,
    is_complete,
    rank_state_name,
    read_pointer,
    step_dir_name,
    step_of,
)
from cinescene.ckpt.rank_state import check_rank_state, write_rank_state
from cinescene.ckpt.record import TrainerRecord, read_record
from cinescene.ckpt.zero import ZeroShards
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.durable import fsync_path, fsync_tree, write_atomic
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

_log = get_logger("train.checkpoint")

CRASH_ENV = "CINESCENE_TEST_CRASH_AT"


def _crash_point(point: str, step: int) -> None:
    """Test hook: die like `kill -9` of the whole job at ``point`` (see module doc)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and (not at or int(at) == step):
        os.killpg(os.getpgid(0), signal.SIGKILL)


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a directory tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _broadcast_from_main(values: list[int]) -> list[int]:
    """Rank 0's ``values`` on every rank (a collective)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return [int(v) for v in tensor.tolist()]


def validate(step_dir: Path) -> TrainerRecord:
    """Everything resume will read, checked without loading tensors: the trainer record, every manifest
    file at its recorded size, every ZeRO shard's and rank file's structure (safe unpickling).

    Raises DamagedCheckpointError or UnsafeCheckpointError naming the first bad file.
    """
    record = read_record(step_dir)
    files = manifest.read_manifest(step_dir)
    if files is None:
        raise DamagedCheckpointError(step_dir / manifest.MANIFEST, "missing")
    manifest.check_sizes(step_dir, files)
    ZeroShards(step_dir / ZERO_TAG).check_all()
    for rank in range(record.world_size):
        check_rank_state(step_dir / RANK_STATES / rank_state_name(rank))
    return record


class CheckpointManager:
    def __init__(self, root: str | Path, cfg: CheckpointConfig, *, rank: int, world_size: int):
        self.root = Path(root)
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size

    # ---------------------------------------------------------------- queries
    def complete_steps(self) -> list[Path]:
        """Complete step directories, oldest first (a symlink leading outside is not one of ours)."""
        if not self.root.is_dir():
            return []
        return sorted(
            (p for p in self.root.iterdir() if is_complete(p) and inside(self.root, p)), key=step_of
        )

    def latest(self) -> Path | None:
        """`latest`'s target, or None when it is absent or unusable."""
        try:
            return read_pointer(self.root)
        except DamagedCheckpointError:
            return None

    # ---------------------------------------------------------------- startup
    def recover(self) -> None:
        """Rank 0, before anything else: drop leftovers of a
        killed save, repair `latest`, point it at the newest."""
        if self.rank != 0 or not self.root.is_dir():
            return
        for leftover in self.root.glob(f"{TMP_PREFIX}*"):
            _log.warning("removing %s, left by a save or deletion that did not finish", leftover)
            _remove(leftover)
        complete = self.complete_steps()
        pointer = self.root / LATEST
        try:
            current = read_pointer(self.root)
        except DamagedCheckpointError as exc:
            _log.warning(
                "%s; ignoring it: %s",
                exc,
                f"resuming from the newest complete checkpoint, {complete[-1].name}"
                if complete
                else "no complete checkpoint remains",
            )
            _remove(pointer)
            current = None
        else:
            if complete and current is not None and step_of(complete[-1]) > step_of(current):
                _log.warning(
                    "`latest` named %s; %s is complete and newer (its save was killed before the "
                    "pointer moved): pointing `latest` at it",
                    current.name,
                    complete[-1].name,
                )
        if complete and (current is None or step_of(complete[-1]) > step_of(current)):
            write_atomic(pointer, complete[-1].name + "\n")

    def choose(self, resume: str) -> Path | None:
        """Collective: the step directory to resume from (see checkpoint.resume), or None to start fresh.

        Rank 0 decides (its warnings and errors are the only ones printed) and tells the others.
        """
        status, step, error = 0, -1, None
        if self.rank == 0:
            try:
                chosen = self._choose(resume)
                step = -1 if chosen is None else step_of(chosen)
            except CineSceneError as exc:
                status, error = 1, exc
        status, step = _broadcast_from_main([status, step])
        if error is not None:
            raise error
        if status:
            raise CineSceneError("rank 0 could not choose a checkpoint to resume (its error says why)")
        if step < 0:
            return None
        if resume in ("auto", "never"):
            return self.root / step_dir_name(step)
        return _explicit_path(resume)

    def _choose(self, resume: str) -> Path | None:
        if resume == "never":
            if self.complete_steps():
                raise CineSceneError(
                    f"checkpoint.resume=never but {self.root} already holds checkpoints; "
                    "use a new run.dir (or checkpoint.resume=auto to continue)"
                )
            return None
        if resume != "auto":
            path = _explicit_path(resume)
            validate(path)  # the one asked for, or an error naming the file: no fallback
            newer = [p.name for p in self.complete_steps() if step_of(p) > (step_of(path) or -1)]
            if inside(self.root, path) and newer:
                raise CineSceneError(
                    f"checkpoint.resume={resume} would rewind this run, but newer checkpoints "
                    f"exist in {self.root} ({', '.join(newer)}); resume into a new run.dir"
                )
            return path
        latest = self.latest()
        candidates = [
            p for p in reversed(self.complete_steps()) if latest is None or step_of(p) <= step_of(latest)
        ]
        for index, candidate in enumerate(candidates):
            try:
                validate(candidate)
                return candidate
            except (DamagedCheckpointError, UnsafeCheckpointError) as exc:
                after = (
                    f"falling back to {candidates[index + 1].name}"
                    if index + 1 < len(candidates)
                    else "no older checkpoint to fall back to"
                )
                _log.warning("checkpoint %s is unusable: %s; %s", candidate.name, exc, after)
        if candidates:
            raise CineSceneError(
                f"no usable checkpoint in {self.root}: every one is damaged (the warnings above "
                "name the files); move them away to start over"
            )
        return None

    # ------------------------------------------------------------------- save
    def save(self, engine, record: TrainerRecord, rank_state: Mapping[str, Any], config_yaml: str) -> Path:
        """Collective: every rank calls it. Returns the committed step directory."""
        step = record.step
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
        writer = ds_engine.install(engine)
        writer.take_written()
        engine.save_checkpoint(str(tmp), tag=ZERO_TAG, save_latest=False, exclude_frozen_parameters=True)
        _crash_point("after_shards", step)
        written = {str(path.relative_to(tmp)): rec for path, rec in writer.take_written().items()}
        own = f"{RANK_STATES}/{rank_state_name(self.rank)}"
        written[own] = write_rank_state(tmp / own, rank_state)
        manifest.write_part(tmp, self.rank, written)
        _crash_point("after_rank_states", step)
        _barrier()
        if self.rank == 0:
            self._commit(tmp, final, record, config_yaml)
        _barrier()
        return final

    def _commit(self, tmp: Path, final: Path, record: TrainerRecord, config_yaml: str) -> None:
        for script in tmp.glob("*.py"):  # DeepSpeed's recovery scripts: code has no place in a checkpoint
            script.unlink()
        own = {
            CONFIG_FILE: manifest.write_bytes(tmp / CONFIG_FILE, config_yaml.encode()),
            TRAINER_STATE: manifest.write_bytes(tmp / TRAINER_STATE, record.to_json().encode()),
        }
        manifest.merge_parts(tmp, own)
        fsync_tree(tmp)
        _crash_point("before_rename", record.step)
        if final.exists() or final.is_symlink():  # after a fall-back or rewind: the unusable one makes way
            stale = self.root / f"{DELETE_PREFIX}{final.name}"
            os.rename(final, stale)
            _remove(stale)  # a symlink is removed, never what it points to
        os.rename(tmp, final)
        fsync_path(self.root)
        _crash_point("after_rename", record.step)
        write_atomic(self.root / LATEST, final.name + "\n")
        _crash_point("after_latest", record.step)
        _log.info("saved checkpoint %s", final)
        self.apply_retention()

    def apply_retention(self) -> list[Path]:
        """Delete checkpoints outside the retention policy (rank 0); returns the deleted paths."""
        complete = self.complete_steps()
        keep = set(complete[-self.cfg.keep_last :])
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


def _explicit_path(resume: str) -> Path:
    """checkpoint.resume=<path>: a step directory, or a checkpoints or run directory (its `latest`)."""
    path = Path(resume)
    for root in (path, path / CHECKPOINTS):
        if (
            root.is_dir()
            and step_of(root) is None
            and ((root / LATEST).exists() or (root / LATEST).is_symlink())
        ):
            target = read_pointer(root)
            if target is not None:
                return target
    if not path.is_dir():
        raise CineSceneError(f"checkpoint.resume={resume}: no such checkpoint directory")
    if not (path / TRAINER_STATE).exists():
        raise CineSceneError(
            f"checkpoint.resume={resume}: {path} is not a checkpoint directory (no {TRAINER_STATE})"
        )
    return path
