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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cinescene.ckpt import manifest
from cinescene.ckpt.errors import DamagedCheckpointError, UnsafeCheckpointError
from cinescene.ckpt.layout import (
    CHECKPOINTS,
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
from cinescene.ckpt.rank_state import check_rank_state
from cinescene.ckpt.record import TrainerRecord, read_record
from cinescene.ckpt.zero import ZeroShards
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from .background import io_step
from .saving import SaveFigures, Saver, remove, write_atomic

_log = get_logger("train.checkpoint")


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
        self.saver = Saver(
            self.root,
            cfg,
            rank=rank,
            world_size=world_size,
            latest=self.latest,
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

    def latest(self) -> Path | None:
        """`latest`'s target, or None when it is absent or unusable."""
        try:
            return read_pointer(self.root)
        except DamagedCheckpointError:
            return None

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
