"""The checkpoint directory of a run: recovery, choosing what to resume, and the save side's entry points.

Saving (the protocol, ``checkpoint.async``, commit, retention) is
:mod:`.saving`; :class:`CheckpointManager` hands it its saves. A ``step_*``
directory is always complete and ``latest`` never names a partial one.

At start (:meth:`CheckpointManager.recover`, rank 0, a collective), leftovers
of a killed save (``.tmp-*``) are removed, an unusable `latest` is replaced
with one warning, and `latest` moves forward when a complete directory is
newer (a save killed between its rename and the pointer update). The pointer
is only ever replaced atomically, never removed first: on a full disk it stays
as it was and start-up stops with one line.
:meth:`CheckpointManager.choose` then picks the checkpoint to resume: the
newest one whose files are all there at their recorded sizes and whose
pickles hold data only; each one skipped costs one warning line naming the
file.

Test hooks: :mod:`.save_points` (``CINESCENE_TEST_CRASH_AT``,
``CINESCENE_TEST_SAVE_TRACE``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cinescene.ckpt import manifest
from cinescene.ckpt.errors import DamagedCheckpointError, UnsafeCheckpointError
from cinescene.ckpt.layout import (
    LATEST,
    RANK_STATES,
    TMP_PREFIX,
    ZERO_TAG,
    inside,
    is_complete,
    rank_state_name,
    read_pointer,
    step_of,
)
from cinescene.ckpt.locate import latest_step_dir, resolve_step_dir
from cinescene.ckpt.rank_state import check_rank_state
from cinescene.ckpt.record import TrainerRecord, read_record
from cinescene.ckpt.zero import ZeroShards
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .background import io_step
from .saving import SaveFigures, Saver, remove, write_atomic

_log = get_logger("train.checkpoint")


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
        self.saver = Saver(
            self.root,
            cfg,
            rank=rank,
            world_size=world_size,
            latest=lambda: latest_step_dir(self.root),
            complete_steps=self.complete_steps,
        )

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
        """Collective, before anything else: rank 0 drops leftovers of a killed save, repairs `latest` and
        points it at the newest complete step; the others wait for it and share its one-line error."""
        error = None
        if self.rank == 0 and self.root.is_dir():
            try:
                self._recover()
            except CineSceneError as exc:
                error = exc
        (failed,) = _broadcast_from_main([int(error is not None)])
        if error is not None:
            raise error
        if failed:
            raise CineSceneError("rank 0 could not repair the checkpoint directory (its error says why)")

    def _recover(self) -> None:
        for leftover in self.root.glob(f"{TMP_PREFIX}*"):
            _log.warning("removing %s, left by a save or deletion that did not finish", leftover)
            io_step(leftover, lambda leftover=leftover: remove(leftover))
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
            current = None
            # Replaced below in one atomic step (on a full disk it stays as it was). Only a pointer that
            # cannot be replaced in place, or that has nothing to name, is removed: it names nothing readable.
            if not complete or (pointer.is_dir() and not pointer.is_symlink()):
                io_step(pointer, lambda: remove(pointer))
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
        """Collective: a whole save, waited for; returns the committed step directory."""
        return self.saver.save(engine, record, rank_state, config_yaml)

    def begin_save(
        self, engine, record: TrainerRecord, rank_state: Mapping[str, Any], config_yaml: str
    ) -> None:
        """Collective: start a save; with checkpoint.async it goes on in the background (:mod:`.saving`)."""
        self.saver.begin(engine, record, rank_state, config_yaml)

    def check_planned_host_copy(self, planned_bytes: int | None, local_ranks: int) -> None:
        """Collective at start-up, before the engine: checkpoint.async refused at cinescene plan's figure."""
        self.saver.check_planned(planned_bytes, local_ranks)

    def prepare_background(self, engine, callback_sizes: list[int], local_ranks: int) -> None:
        """Collective at start-up: checkpoint.async's host copy measured, printed, checked and reserved."""
        self.saver.prepare(engine, callback_sizes, local_ranks)

    def before_update(self) -> None:
        """Before each optimizer update: wait, if need be, for the in-flight save's host copy."""
        self.saver.wait_for_copy()

    def poll(self) -> Path | None:
        """Collective at each step boundary: the step directory of a save that just committed, else None."""
        return self.saver.poll()

    def finish(self) -> Path | None:
        """Collective: wait for the save in flight; its step directory (None when there was none)."""
        return self.saver.finish()

    def abandon(self) -> None:
        """After an error, without collectives: stop tracking the save in flight."""
        self.saver.abandon()

    @property
    def last_save(self) -> SaveFigures | None:
        """How the last committed save went (this rank's view)."""
        return self.saver.last

    @property
    def host_copy_bytes(self) -> int:
        """Host memory held for checkpoint.async's copies (0 without it)."""
        return 0 if self.saver.host is None else self.saver.host.nbytes

    def apply_retention(self) -> list[Path]:
        """Delete checkpoints outside the retention policy (rank 0); returns the deleted paths."""
        return self.saver.apply_retention()
