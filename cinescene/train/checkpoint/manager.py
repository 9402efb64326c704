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

import json
import os
import re
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
from cinescene.ckpt.locate import latest_step_dir, resolve_step_dir
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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def _broadcast_from_main(values: list[int]) -> list[int]:
    """Rank 0's ``values`` on every rank (a collective)."""
    if not _distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.int64, device=_device())
    dist.broadcast(tensor, src=0)
    return [int(v) for v in tensor.tolist()]


def _broadcast_text(text: str, src: int = 0) -> str:
    """Rank ``src``'s ``text`` on every rank (a collective): its length, then its UTF-8 bytes."""
    if not _distributed():
        return text
    data = text.encode()
    length = torch.tensor([len(data)], dtype=torch.int64, device=_device())
    dist.broadcast(length, src=src)
    buffer = torch.zeros(int(length.item()), dtype=torch.uint8, device=_device())
    if dist.get_rank() == src:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=src)
    return bytes(buffer.cpu().tolist()).decode()


def _min_over_ranks(value: int) -> int:
    """The smallest ``value`` any rank holds (a collective)."""
    if not _distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


_RANK_FILE = re.compile(r"(?:zero_pp_rank_(\d+)_|rank_(\d+)\.safetensors$)")


def verification_share(names: list[str], sizes: list[int], ranks: int) -> list[list[int]]:
    """Which files (indices into ``names``) each of ``ranks`` ranks hashes: a rank's own shard and rank
    file go to that rank (modulo ``ranks``: it reads them next, from its page cache), the others to the
    rank with the fewest bytes so far."""
    share: list[list[int]] = [[] for _ in range(ranks)]
    load = [0] * ranks
    rest = []
    for index, name in enumerate(names):
        match = _RANK_FILE.search(name)
        if match:
            owner = int(match.group(1) or match.group(2)) % ranks
            share[owner].append(index)
            load[owner] += sizes[index]
        else:
            rest.append(index)
    for index in sorted(rest, key=lambda i: -sizes[i]):
        owner = min(range(ranks), key=load.__getitem__)
        share[owner].append(index)
        load[owner] += sizes[index]
    return share


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

    # ---------------------------------------------------------------- startup
    def recover(self) -> None:
        """Rank 0, before anything else: drop leftovers of a killed save, repair `latest`, point it at the
        newest."""
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

        Rank 0 plans (which checkpoints to try, in order) and checks each one's structure; its warnings and
        errors are the only ones printed. Every rank hashes its share of the files against the manifest
        (``checkpoint.verify``). The first candidate that passes is every rank's answer; a damaged one is
        skipped with one warning naming the file, unless it was asked for by path.
        """
        plan, error = "", None
        if self.rank == 0:
            try:
                candidates, explicit = self._plan(resume)
                plan = json.dumps({"paths": [str(p) for p in candidates], "explicit": explicit})
            except CineSceneError as exc:
                error = exc
        plan = _broadcast_text(plan)
        if error is not None:
            raise error
        if not plan:
            raise CineSceneError("rank 0 could not choose a checkpoint to resume (its error says why)")
        decided = json.loads(plan)
        candidates, explicit = [Path(p) for p in decided["paths"]], decided["explicit"]
        for index, candidate in enumerate(candidates):
            problem: CineSceneError | None = None
            if self.rank == 0:
                try:
                    validate(candidate)
                except (DamagedCheckpointError, UnsafeCheckpointError) as exc:
                    problem = exc
            (status,) = _broadcast_from_main([int(problem is not None)])
            if not status and self.cfg.verify:
                problem = self._verify_content(candidate)
                status = int(problem is not None)
            if not status:
                return candidate
            if explicit:
                if problem is not None:
                    raise problem
                raise CineSceneError(f"rank 0 refused {candidate} (its error says why)")
            if self.rank == 0:
                after = (
                    f"falling back to {candidates[index + 1].name}"
                    if index + 1 < len(candidates)
                    else "no older checkpoint to fall back to"
                )
                _log.warning("checkpoint %s is unusable: %s; %s", candidate.name, problem, after)
        if candidates:
            raise CineSceneError(
                f"no usable checkpoint in {self.root}: every one is damaged (the warnings above "
                "name the files); move them away to start over"
            )
        return None

    def _plan(self, resume: str) -> tuple[list[Path], bool]:
        """Rank 0: the checkpoints to try, newest first, and whether they were asked for by path (then there
        is no fallback).

        ``checkpoint.resume=<path>`` seeds an empty run only: once this run's own checkpoint directory holds
        a complete step, every start resumes from its own checkpoints (a SLURM requeue repeats the command
        line; taking the path again would rewind the run to the fork point).
        """
        own = self.complete_steps()
        if resume == "never":
            if own:
                raise CineSceneError(
                    f"checkpoint.resume=never but {self.root} already holds checkpoints; "
                    "use a new run.dir (or checkpoint.resume=auto to continue)"
                )
            return [], False
        if resume != "auto" and not own:
            try:  # absolute: the other ranks take rank 0's answer, not their own reading of the path
                path = resolve_step_dir(resume).absolute()
            except CineSceneError as exc:
                raise CineSceneError(f"checkpoint.resume={resume}: {exc}") from None
            _log.info("checkpoint.resume=%s: this run has no checkpoint yet; starting from %s", resume, path)
            return [path], True
        latest = latest_step_dir(self.root)
        candidates = [p for p in reversed(own) if latest is None or step_of(p) <= step_of(latest)]
        if resume != "auto" and candidates:
            _log.info(
                "checkpoint.resume=%s is ignored: it seeds an empty run only, and %s holds this run's own "
                "checkpoints (newest %s): resuming from them",
                resume,
                self.root,
                candidates[0].name,
            )
        return candidates, False

    def _verify_content(self, step_dir: Path) -> DamagedCheckpointError | None:
        """Collective: every file of the manifest hashed by one rank (:func:`verification_share`); the first
        damaged one (by name), the same on every rank, or None."""
        files = manifest.read_manifest(step_dir) or {}
        names = sorted(files)
        share = verification_share(names, [files[n].size for n in names], self.world_size)
        found, problem = len(names), ""
        for index in sorted(share[self.rank]):
            problem = manifest.check_content(step_dir / names[index], files[names[index]]) or ""
            if problem:
                found = index
                break
        found = _min_over_ranks(found)
        if found == len(names):
            return None
        owner = next(rank for rank, indices in enumerate(share) if found in indices)
        problem = _broadcast_text(problem if self.rank == owner else "", src=owner)  # only it knows why
        return DamagedCheckpointError(step_dir / names[found], f"{problem} (checked against the manifest)")

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
        latest = latest_step_dir(self.root)
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
