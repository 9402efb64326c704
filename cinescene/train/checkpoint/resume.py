"""Starting a run: the one place that resumes (choose, check compatibility, load, restore RNG and callbacks).

:func:`resume` is called by every rank after the process group exists. It
asks the manager which checkpoint to resume (rank 0 decides, with fallback
past damaged ones), stops early when that checkpoint already reached
``train.max_steps``, builds the engine under the run seed, checks that the
checkpoint fits the model before DeepSpeed reads anything, loads it (same
world size: DeepSpeed's loader through our checkpoint engine; another world
size: :mod:`.reshard`), and restores this rank's RNG. What a save records
about the run is built by :class:`RunFacts` here as well, so the trainer
record is written and read back in this package only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cinescene import rng
from cinescene.ckpt import rank_state
from cinescene.ckpt.layout import RANK_STATES, ZERO_TAG, rank_state_name
from cinescene.ckpt.record import TrainerRecord, params_mismatch, read_record
from cinescene.ckpt.zero import ZeroShards
from cinescene.config.schema import CineSceneConfig
from cinescene.distributed.batching import BatchPlan
from cinescene.distributed.groups import ParallelLayout
from cinescene.errors import CineSceneError
from cinescene.log import get_logger

from ..callbacks import CallbackList, TrainState
from .manager import CheckpointManager
from .reshard import load_resharded

_log = get_logger("train")


def parameter_manifest(model: torch.nn.Module):
    """Full shapes of every parameter and the trainable names (ZeRO-3 aware), as a checkpoint records them."""
    shapes = {name: list(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    return shapes, trainable


@dataclass(frozen=True)
class RunFacts:
    """What every save of this run records besides the step: the layout and the model."""

    global_batch_size: int
    world_size: int
    dp_size: int
    sp_size: int
    zero_stage: int
    precision: str
    model_name: str
    run_name: str
    ema: bool
    params: dict[str, list[int]]
    trainable: list[str]

    def record(self, state: TrainState, reason: str, wandb_run_id: str | None) -> TrainerRecord:
        return TrainerRecord(
            step=state.step,
            consumed_samples=state.consumed_samples,
            global_batch_size=self.global_batch_size,
            world_size=self.world_size,
            dp_size=self.dp_size,
            sp_size=self.sp_size,
            zero_stage=self.zero_stage,
            precision=self.precision,
            model_name=self.model_name,
            params=self.params,
            trainable=self.trainable,
            run_name=self.run_name,
            ema=self.ema,
            reason=reason,
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            wandb_run_id=wandb_run_id,
        )


def rank_state_now(rank: int, callbacks: CallbackList) -> dict[str, Any]:
    """This rank's part of a save: its RNG states and its callbacks' states."""
    return {"rank": rank, "rng": rng.capture(), "callbacks": callbacks.state_dict()}


@dataclass
class Start:
    """Where training starts: a fresh run, a resumed one, or nothing left to do (``engine`` is None)."""

    state: TrainState
    engine: Any = None
    facts: RunFacts | None = None
    path: Path | None = None
    record: TrainerRecord | None = None
    wandb_run_id: str | None = None  # the W&B run to continue (only when resuming this run's own)
    _callback_states: Mapping[str, Any] | None = field(default=None, repr=False)
    _all_rank_files: Callable[[], list[Mapping[str, Any]]] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.engine is None

    def restore_callbacks(self, callbacks: CallbackList) -> None:
        """Give the callbacks their saved states (the EMA re-slices itself from all rank files if need be)."""
        if self._callback_states is None:
            return
        loader = self._all_rank_files
        for callback in callbacks.callbacks:
            if hasattr(callback, "provide_all_ranks") and loader is not None:
                callback.provide_all_ranks(
                    lambda name=callback.name, read=loader: [s["callbacks"][name] for s in read()]
                )
        try:
            callbacks.load_state_dict(self._callback_states)
        except (KeyError, TypeError, ValueError) as exc:
            raise CineSceneError(
                f"checkpoint {self.path}: its callback states (EMA, counters) do not fit this run "
                f"({type(exc).__name__}: {exc})"
            ) from None


def check_compatible(
    record: TrainerRecord,
    path: Path,
    *,
    params: Mapping[str, list[int]],
    trainable: list[str],
    zero_stage: int,
    world_size: int,
) -> None:
    """One-line errors, before DeepSpeed touches anything, when the checkpoint cannot load here.

    Another world size is fine for ZeRO-3 (resharded on load); another model or ZeRO stage is not.
    """
    parts = params_mismatch(record.params, params)
    changed_trainable = sorted(set(record.trainable) ^ set(trainable))
    if changed_trainable and not parts:
        parts.append("trainable set differs: " + ", ".join(changed_trainable[:6]))
    if parts:
        raise CineSceneError(f"checkpoint {path} was saved for another model config: " + "; ".join(parts))
    if record.zero_stage != zero_stage:
        raise CineSceneError(
            f"checkpoint {path} holds ZeRO-{record.zero_stage} shards; this run uses "
            f"ZeRO-{zero_stage} (parallel.zero_stage): set it back to resume"
        )
    if record.world_size != world_size and zero_stage != 3:
        raise CineSceneError(
            f"checkpoint {path} holds ZeRO-{zero_stage} shards of {record.world_size} ranks: "
            "loading at another world size needs ZeRO-3 (parallel.zero_stage=3); resume it at "
            f"{record.world_size} ranks"
        )


def _facts(cfg: CineSceneConfig, layout: ParallelLayout, plan: BatchPlan, model: torch.nn.Module) -> RunFacts:
    params, trainable = parameter_manifest(model)
    return RunFacts(
        global_batch_size=plan.global_batch_size,
        world_size=layout.world_size,
        dp_size=layout.dp_size,
        sp_size=layout.sp_size,
        zero_stage=cfg.parallel.zero_stage,
        precision=cfg.train.precision,
        model_name=cfg.model.name,
        run_name=cfg.run.name,
        ema=cfg.train.ema.enabled,
        params=params,
        trainable=trainable,
    )


def resume(
    cfg: CineSceneConfig,
    layout: ParallelLayout,
    plan: BatchPlan,
    checkpoints: CheckpointManager,
    build_engine: Callable[[], Any],
) -> Start:
    """Collective. Choose and check the checkpoint, build the engine, load, restore this rank's RNG."""
    checkpoints.recover()
    path = checkpoints.choose(cfg.checkpoint.resume)
    record = read_record(path) if path is not None else None
    state = TrainState(max_steps=cfg.train.max_steps)
    if record is not None and record.step >= cfg.train.max_steps:
        _log.info(
            "%s is at step %d of train.max_steps=%d: nothing to do", path, record.step, cfg.train.max_steps
        )
        return Start(state=state, path=path, record=record)

    reshard = record is not None and record.world_size != layout.world_size
    if reshard and record.global_batch_size != plan.global_batch_size and layout.is_main:
        _log.warning(
            "resuming at %d ranks: the global batch changes from %d to %d (set train.global_batch_size "
            "to keep it)",
            layout.world_size,
            record.global_batch_size,
            plan.global_batch_size,
        )
    rng.seed_all(cfg.run.seed)  # identical initial weights on every rank
    engine = build_engine()
    facts = _facts(cfg, layout, plan, engine.module)
    start = Start(state=state, engine=engine, facts=facts, path=path, record=record)
    own_state = None
    if record is not None:
        check_compatible(
            record,
            path,
            params=facts.params,
            trainable=facts.trainable,
            zero_stage=cfg.parallel.zero_stage,
            world_size=layout.world_size,
        )
        own_state = _load(engine, path, record, layout, start)
        state.step = record.step
        state.consumed_samples = record.consumed_samples
        state.last_checkpoint = str(path)
        if (
            path.parent.resolve() == checkpoints.root.resolve()
        ):  # a fork from elsewhere starts its own W&B run
            start.wandb_run_id = record.wandb_run_id
        _log.info(
            "resumed from %s (step %d, %d samples consumed)%s",
            path,
            record.step,
            record.consumed_samples,
            f", resharded from {record.world_size} to {layout.world_size} ranks" if reshard else "",
        )
    if own_state is not None:
        try:
            rng.restore(own_state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CineSceneError(
                f"{path / RANK_STATES / rank_state_name(layout.rank)}: its RNG states cannot be "
                f"restored ({exc})"
            ) from None
    else:
        rng.seed_all(rng.rank_seed(cfg.run.seed, layout.rank) + state.step)
    return start


def _load(engine, path: Path, record: TrainerRecord, layout: ParallelLayout, start: Start) -> dict | None:
    """Load the shards; returns this rank's own saved state (None when resharded: no file is this rank's)."""
    from cinescene.ckpt import ds_engine

    files = [path / RANK_STATES / rank_state_name(r) for r in range(record.world_size)]
    start._all_rank_files = lambda: [rank_state.RankStateFile(f).tree for f in files]
    if record.world_size != layout.world_size:
        load_resharded(engine, ZeroShards(path / ZERO_TAG))
        # The counters every rank keeps alike come from rank 0's file; the EMA re-slices from all of them.
        start._callback_states = rank_state.RankStateFile(files[0]).tree["callbacks"]
        return None
    ds_engine.install(engine)
    engine.load_checkpoint(
        str(path),
        tag=ZERO_TAG,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
    )
    own = rank_state.read_rank_state(files[layout.rank])
    start._callback_states = own["callbacks"]
    return own


__all__ = ["RunFacts", "Start", "check_compatible", "parameter_manifest", "rank_state_now", "resume"]
