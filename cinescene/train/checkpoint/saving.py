"""Writing a checkpoint: the save protocol, synchronous or in the background, its commit and retention.

Every rank calls :meth:`Saver.begin` at the same step boundary. Rank 0 creates
``.tmp-step_N/``; each rank takes its state -- DeepSpeed's ZeRO files, handed
over by our checkpoint engine, and its rank state (RNG, callbacks such as the
EMA shard) -- and writes it into that directory: each file hashed while it is
written and fsynced, then the rank's manifest part. Once every rank has
written (:func:`~.background.agree`, one collective), rank 0 commits: config,
trainer record and ``manifest.json``, fsync of the tree, rename to
``step_N/`` (the commit point), fsync of the parent, ``latest`` replaced
atomically, then retention. So a ``step_*`` directory is always complete and
``latest`` never names a partial one.

Synchronous (``checkpoint.async=false``): all of it happens inside ``begin``
and :meth:`Saver.finish`, and the loop waits.

``checkpoint.async=true``: ``begin`` copies the rank's state into host memory
(:class:`~.host_copy.HostCopy`) and returns; a daemon thread writes the files
from that copy and, on rank 0, commits. At every step boundary while a save is
in flight the loop calls :meth:`Saver.poll` (one small all-reduce): when every
rank has written, rank 0's thread commits; when it has, the save is done. At
most one save is in flight: the next ``begin`` first waits for it (logged with
the wait's length), and a preemption or the end of training waits for it
(:meth:`Saver.finish`) before its own, synchronous, save.

A failed write or commit (full disk, permissions) stops the run on every rank
with one line naming the file (:class:`~.background.CheckpointWriteError`),
once every rank has stopped writing; rank 0 removes the ``.tmp-step_N``, so
the previous checkpoint stays the newest complete one and nothing is left
behind. A kill at any moment leaves at most a ``.tmp-*`` directory, which the
next start removes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cinescene import durable, host_memory
from cinescene.ckpt import ds_engine, manifest
from cinescene.ckpt.layout import (
    CONFIG_FILE,
    DELETE_PREFIX,
    LATEST,
    RANK_STATES,
    TMP_PREFIX,
    TRAINER_STATE,
    ZERO_TAG,
    is_complete,
    rank_state_name,
    step_dir_name,
    step_of,
)
from cinescene.ckpt.rank_state import write_rank_state
from cinescene.ckpt.record import TrainerRecord
from cinescene.config.checkpoint import CheckpointConfig
from cinescene.durable import fsync_path, fsync_tree
from cinescene.host_memory import human_bytes
from cinescene.log import get_logger

from .background import (
    CheckpointWriteError,
    WriterThread,
    agree,
    check_host_memory,
    io_step,
    run_inline,
    shared_message,
)
from .host_copy import HostCopy, storage_sizes
from .save_points import save_point

_log = get_logger("train.checkpoint")


# ------------------------------------------------------------------------- durable files
def write_atomic(path: Path, text: str) -> None:
    """:func:`cinescene.durable.write_atomic`, its failure (a full disk) one CheckpointWriteError naming
    ``path``: readers see the old or the new file, never none, and nothing is left beside it."""
    try:
        durable.write_atomic(path, text)
    except OSError as exc:
        raise CheckpointWriteError(
            f"cannot write {path}: {exc.strerror or exc} (it was left as it was)"
        ) from None


def remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a directory tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# ---------------------------------------------------------------------------- one save
@dataclass
class WriteFigures:
    """One rank's write of its part of a save."""

    seconds: float
    bytes: int


@dataclass
class SaveFigures:
    """How a save went, for the log line and the benchmark (this rank's view)."""

    step: int
    blocked_s: float  # the loop waited this long (the whole save when synchronous)
    waited_s: float = 0.0  # of which, in begin(), for the previous save to finish
    copy_wait_s: float = (
        0.0  # of which, before the next optimizer update, for the host copy (checkpoint.async)
    )
    write_s: float = 0.0  # this rank's file writes (on the writer thread with checkpoint.async)
    bytes: int = 0  # this rank's bytes
    commit_s: float = 0.0  # rank 0's commit
    total_s: float = 0.0  # begin() to committed


@dataclass
class _InFlight:
    tmp: Path
    final: Path
    record: TrainerRecord
    config_yaml: str
    figures: SaveFigures
    started: float
    write: Future
    copied: threading.Event
    commit: Future | None = None
    commit_started: bool = False


class Saver:
    """The save side of a checkpoint directory (see the module doc); every method except
    :meth:`apply_retention` and :meth:`abandon` is a collective."""

    def __init__(
        self,
        root: Path,
        cfg: CheckpointConfig,
        *,
        rank: int,
        world_size: int,
        latest: Callable[[], Path | None],
        complete_steps: Callable[[], list[Path]],
    ):
        self.root = root
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self._latest = latest
        self._complete_steps = complete_steps
        self.background = cfg.background_write
        self.host = HostCopy() if self.background else None
        self._thread = WriterThread() if self.background else None
        self._flight: _InFlight | None = None
        self.last: SaveFigures | None = None

    def check_planned(self, planned_bytes: int | None, local_ranks: int) -> None:
        """Collective, at start-up before the engine is built, with checkpoint.async: refuse with one line
        when this node's ranks cannot have the host copy at cinescene plan's figure (``planned_bytes``, one
        rank's checkpoint), so such a run loads nothing first. None (no plan figure): :meth:`prepare` checks
        the measured figure alone."""
        if self.host is None:
            return
        available = host_memory.available_bytes() if planned_bytes is not None else None
        check_host_memory(planned_bytes or 0, local_ranks, available, source=" (cinescene plan's figure)")

    def prepare(self, engine, callback_sizes: list[int], local_ranks: int) -> None:
        """Collective, at start-up with checkpoint.async: the host copy measured from the engine's own state
        (its ZeRO partition: fp32 weights, optimizer moments; its module states) plus the callbacks' state
        tensors (``callback_sizes``: the EMA shard), printed, refused with one line when this node's ranks
        cannot all have it, else reserved now, so no save allocates it."""
        if self.host is None:
            return
        sizes = storage_sizes(
            [engine.optimizer.state_dict(), engine.module_state_dict(exclude_frozen_parameters=True)]
        ) + list(callback_sizes)
        line = check_host_memory(sum(sizes), local_ranks, host_memory.available_bytes())
        if self.rank == 0:
            _log.info(line)
        self.host.reserve(sizes)

    @property
    def in_flight(self) -> int | None:
        """The step being saved, or None."""
        return None if self._flight is None else self._flight.record.step

    def _run(self, work: Callable[[], Any]) -> Future:
        return self._thread.submit(work) if self._thread is not None else run_inline(work)

    # ------------------------------------------------------------------------- begin
    def begin(
        self,
        engine,
        record: TrainerRecord,
        rank_state: Mapping[str, Any],
        config_yaml: str,
        *,
        copy: bool = True,
    ) -> None:
        """Start saving ``record.step``: returns once DeepSpeed has handed the state over. Synchronous: the
        whole save. checkpoint.async: the copy and the writing go on in the writer thread; the next
        optimizer update first calls :meth:`wait_for_copy`. ``copy=False``: the caller waits for this save
        (:meth:`finish`) before the state can change, so it is written from the live state."""
        started = time.perf_counter()
        waited = 0.0
        if self._flight is not None:
            previous = self._flight.record.step
            self.finish()
            waited = time.perf_counter() - started
            if self.rank == 0:
                _log.info(
                    "the save of %s was still being written: waited %.2f s before saving step %d",
                    step_dir_name(previous),
                    waited,
                    record.step,
                )
        step = record.step
        name = step_dir_name(step)
        tmp, final = self.root / f"{TMP_PREFIX}{name}", self.root / name
        error = None
        if self.rank == 0:
            try:
                io_step(self.root, lambda: self._make_tmp(tmp))
            except CheckpointWriteError as exc:
                error = exc
            save_point("tmp_created", step, self.rank)
        failed = agree(error is not None)[0]
        if failed:
            self._stop(str(error) if error else None, tmp, final, step)
        shards = ds_engine.install(engine)
        shards.take_saved()
        engine.save_checkpoint(str(tmp), tag=ZERO_TAG, save_latest=False, exclude_frozen_parameters=True)
        files = [(path, state, ds_engine.write_shard) for path, state in shards.take_saved()]
        files.append((tmp / RANK_STATES / rank_state_name(self.rank), rank_state, write_rank_state))
        figures = SaveFigures(step=step, blocked_s=0.0, waited_s=waited)
        copied = threading.Event()
        if self.host is not None:
            self.host.mark_produced()  # on a GPU: the copies start after the step that made the state
        self._flight = _InFlight(
            tmp=tmp,
            final=final,
            record=record,
            config_yaml=config_yaml,
            figures=figures,
            started=started,
            copied=copied,
            write=self._run(partial(self._write_part, tmp, files, copied, step, copy)),
        )
        figures.blocked_s = time.perf_counter() - started

    def wait_for_copy(self) -> None:
        """Before the optimizer changes the state again: wait until the in-flight save has its host copy
        (at once when it has: the copy ran while the step's forward and backward did)."""
        flight = self._flight
        if flight is None or flight.copied.is_set():
            return
        started = time.perf_counter()
        flight.copied.wait()
        flight.figures.copy_wait_s = time.perf_counter() - started
        flight.figures.blocked_s += flight.figures.copy_wait_s

    def _make_tmp(self, tmp: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / RANK_STATES).mkdir(parents=True)
        (tmp / ZERO_TAG).mkdir()

    def _write_part(
        self, tmp: Path, files: list, copied: threading.Event, step: int, copy: bool
    ) -> WriteFigures:
        """This rank's host copy (checkpoint.async), files and manifest part: on the writer thread with
        checkpoint.async, where the copy runs while the loop goes on to the next step's forward and
        backward, which change none of it; the optimizer update waits for ``copied``."""
        try:
            try:
                save_point("copy", step, self.rank)
                if self.host is not None and copy:
                    files[:] = [(path, self.host.copy(state), write) for path, state, write in files]
                    self.host.settle()
            finally:
                copied.set()  # the loop may change the originals from here on (also after a failed copy)
            save_point("write", step, self.rank)
            started = time.perf_counter()
            written: dict[str, manifest.FileRecord] = {}
            for index, (path, state, write) in enumerate(files):
                written[str(path.relative_to(tmp))] = io_step(path, partial(write, path, state))
                if index == len(files) - 2:
                    save_point("after_shards", step, self.rank)
            part = tmp / manifest.part_name(self.rank)
            io_step(part, lambda: manifest.write_part(tmp, self.rank, written))
            save_point("after_rank_states", step, self.rank)
            return WriteFigures(time.perf_counter() - started, sum(r.size for r in written.values()))
        finally:
            files.clear()  # the states (a waited-for save's are the live ones) go
            if self.host is not None and copy:
                self.host.release()

    # ------------------------------------------------------------- progress and end
    def poll(self) -> Path | None:
        """At a step boundary: the step directory of the in-flight save once committed, else None."""
        if self._flight is None:
            return None
        return self._advance(block=False)

    def finish(self) -> Path | None:
        """Wait for the in-flight save to be committed; its step directory (None when none was in flight)."""
        if self._flight is None:
            return None
        return self._advance(block=True)

    def save(self, engine, record: TrainerRecord, rank_state: Mapping[str, Any], config_yaml: str) -> Path:
        """A whole save, waited for (also with checkpoint.async: no host copy then, the state cannot change
        meanwhile); returns the committed step directory."""
        self.begin(engine, record, rank_state, config_yaml, copy=False)
        return self.finish()

    def abandon(self) -> None:
        """On the way out after an error (no collectives): forget the in-flight save. Its ``.tmp-step_*``,
        unless rank 0 is committing it, is removed at the next start."""
        self._flight = None

    def _advance(self, block: bool) -> Path | None:
        flight = self._flight
        while True:
            if block:
                _wait(flight.write)
                if flight.commit is not None:
                    _wait(flight.commit)
            written = flight.write.done()
            failed = written and flight.write.exception() is not None
            committed = flight.commit is not None and flight.commit.done()
            if committed and flight.commit.exception() is not None:
                failed, committed = True, False
            n_written, n_failed, n_committed = agree(written, failed, committed)
            if n_failed and n_written == self.world_size:
                self._stop(self._failure_message(flight), flight.tmp, flight.final, flight.record.step)
            if n_committed:
                return self._done(flight)
            if n_written == self.world_size and not flight.commit_started:
                flight.commit_started = True
                if self.rank == 0:
                    flight.commit = self._run(partial(self._commit, flight))
                if block:
                    continue
            if not block:
                return None

    def _failure_message(self, flight: _InFlight) -> str | None:
        for future in (flight.write, flight.commit):
            if future is not None and future.done() and future.exception() is not None:
                exc = future.exception()
                cause = str(exc) if isinstance(exc, CheckpointWriteError) else f"{type(exc).__name__}: {exc}"
                return f"rank {self.rank}: {cause}"
        return None

    def _stop(self, message: str | None, tmp: Path, final: Path, step: int) -> None:
        """Collective, after every rank stopped writing: remove the partial save, raise its one line."""
        cause = shared_message(message)
        self._flight = None
        if self.rank == 0 and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        latest = self._latest()
        if is_complete(final) and (latest is None or latest.name != final.name):
            # The commit failed after the rename (writing `latest`): the step is complete, and the next
            # start points `latest` at it.
            stands = (
                f"{final.name} is complete but `latest` still names {latest.name if latest else 'nothing'}"
            )
        elif latest is not None:
            stands = f"{latest.name} stays the newest complete checkpoint"
        else:
            stands = "no checkpoint was saved yet"
        raise CheckpointWriteError(f"the save of step {step} failed: {cause}; {stands}")

    def _done(self, flight: _InFlight) -> Path:
        self._flight = None
        figures = flight.figures
        if flight.write.done() and flight.write.exception() is None:
            wrote = flight.write.result()
            figures.write_s, figures.bytes = wrote.seconds, wrote.bytes
        if flight.commit is not None:
            figures.commit_s = flight.commit.result()
        figures.total_s = time.perf_counter() - flight.started
        self.last = figures
        if self.rank == 0:
            if self.background:
                _log.info(
                    "saved checkpoint %s (loop blocked %.2f s; written in the background: rank 0's %s in "
                    "%.2f s, committed %.2f s after the save began)",
                    flight.final,
                    figures.blocked_s - figures.waited_s,
                    human_bytes(figures.bytes),
                    figures.write_s,
                    figures.total_s,
                )
            else:
                _log.info("saved checkpoint %s (%.2f s)", flight.final, figures.total_s)
        return flight.final

    # ------------------------------------------------------------------------ commit
    def _commit(self, flight: _InFlight) -> float:
        """Rank 0, once every rank wrote its part: make the step directory complete, then point at it."""
        started = time.perf_counter()
        tmp, final, step = flight.tmp, flight.final, flight.record.step
        save_point("before_commit", step, self.rank)
        for script in tmp.glob("*.py"):  # DeepSpeed's recovery scripts, should a version copy them again
            script.unlink()
        own = {
            CONFIG_FILE: io_step(
                tmp / CONFIG_FILE,
                lambda: manifest.write_bytes(tmp / CONFIG_FILE, flight.config_yaml.encode()),
            ),
            TRAINER_STATE: io_step(
                tmp / TRAINER_STATE,
                lambda: manifest.write_bytes(tmp / TRAINER_STATE, flight.record.to_json().encode()),
            ),
        }
        io_step(tmp / manifest.MANIFEST, lambda: manifest.merge_parts(tmp, own))
        io_step(tmp, lambda: fsync_tree(tmp))
        save_point("before_rename", step, self.rank)
        io_step(final, lambda: self._rename_into_place(tmp, final))
        save_point("after_rename", step, self.rank)
        write_atomic(self.root / LATEST, final.name + "\n")
        save_point("after_latest", step, self.rank)
        self.apply_retention()
        return time.perf_counter() - started

    def _rename_into_place(self, tmp: Path, final: Path) -> None:
        if final.exists() or final.is_symlink():  # after a fall-back or rewind: the unusable one makes way
            stale = self.root / f"{DELETE_PREFIX}{final.name}"
            os.rename(final, stale)
            remove(stale)  # a symlink is removed, never what it points to
        os.rename(tmp, final)
        fsync_path(self.root)

    def apply_retention(self) -> list[Path]:
        """Delete checkpoints outside the retention policy (rank 0, after a commit); the deleted paths.

        Only complete step directories are candidates, so a save still being written (``.tmp-step_*``)
        is never one, and `latest`'s target is always kept. A deletion that fails is a warning: the
        checkpoint just saved is complete either way.
        """
        complete = self._complete_steps()
        keep = set(complete[-self.cfg.keep_last :])
        if self.cfg.keep_every:
            keep |= {p for p in complete if step_of(p) % self.cfg.keep_every == 0}
        latest = self._latest()
        if latest is not None:
            keep.add(latest)
        deleted = []
        for path in complete:
            if path not in keep:
                doomed = self.root / f"{DELETE_PREFIX}{path.name}"
                try:
                    os.rename(path, doomed)
                    shutil.rmtree(doomed)
                except OSError as exc:
                    _log.warning("retention could not remove %s: %s", path, exc.strerror or exc)
                    continue
                deleted.append(path)
        if deleted:
            _log.info("retention removed %s", ", ".join(p.name for p in deleted))
        return deleted


def _wait(future: Future) -> None:
    """Block until ``future`` is done (its exception is read later, after the ranks agree)."""
    try:
        future.exception()
    except BaseException:  # a cancelled future: done as well
        pass
