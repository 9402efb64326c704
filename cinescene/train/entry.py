"""One rank's life: join the job, build or resume everything, train, leave.

Order matters and is explained where it is not obvious: the preemption
handler goes in first (a signal during start-up must not kill the rank), the
model is built under the same seed on every rank, a checkpoint's
compatibility is checked before DeepSpeed reads it, and the per-rank RNG is
seeded (or restored) only after the model exists.
"""
from __future__ import annotations

import itertools
import logging
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from cinescene.config.schema import CineSceneConfig
from cinescene.distributed.env import DistEnv
from cinescene.distributed.groups import build_layout, destroy_process_group, init_process_group
from cinescene.log import get_logger, setup_logging

from . import rng
from .batching import plan_batch
from .callbacks import CallbackList, TrainState
from .checkpoint import CheckpointCadence, CheckpointManager, LoadedCheckpoint, check_compatible, read_trainer_state
from .components import Components, SampleFacts, default_components
from .ema import EMACallback, ShardedEMA
from .engine import build_engine, use_zero_init
from .eval_hook import eval_callbacks
from .guards import NonFiniteGuard
from .loop import Trainer
from .metrics import ThroughputMonitor, device_peak_tflops
from .objective import FlowMatchingObjective
from .preemption import PreemptionCallback, PreemptionFlag
from .preflight import warn_random_init
from .tracking import MetricsLogger, Tracker, install_secret_filter, scrub

_log = get_logger("train")


def _quiet_libraries(level: str) -> None:
    logging.getLogger("DeepSpeed").setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    # torch.distributed's deprecation notices fire on every ZeRO collective.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def parameter_manifest(model: torch.nn.Module):
    """Full shapes of every parameter and the trainable names (ZeRO-3 aware), as the checkpoint records them."""
    shapes = {name: list(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    return shapes, trainable


def _build_callbacks(cfg: CineSceneConfig, env: DistEnv, layout, engine, tracker: Tracker, facts: SampleFacts,
                     flag: PreemptionFlag, loaded: Optional[LoadedCheckpoint]) -> CallbackList:
    """The callbacks in the order they must see a step: measure, judge, average, then decide and log."""
    peak = cfg.tracking.peak_tflops or device_peak_tflops(cfg.train.precision)
    callbacks = [ThroughputMonitor(flops_per_sample=facts.flops_per_sample, tokens_per_sample=facts.tokens_per_sample,
                                   peak_tflops=peak, devices=env.world_size),
                 NonFiniteGuard(cfg.train.max_consecutive_nonfinite)]
    if cfg.train.ema.enabled:
        ema = EMACallback(ShardedEMA(engine.module.named_parameters(), cfg.train.ema,
                                     shard_index=env.rank, shard_count=env.world_size))
        if loaded is not None:
            ema.provide_all_ranks(lambda: [s["callbacks"]["ema"] for s in loaded.all_rank_states()])
        callbacks.append(ema)
    callbacks += eval_callbacks(cfg, engine, layout, tracker, flag, callbacks)
    callbacks += [PreemptionCallback(flag, cfg.launch.preempt_exit_code, engine.device),
                  CheckpointCadence(cfg.checkpoint),
                  MetricsLogger(tracker, cfg.tracking.log_every_steps)]
    callbacks = CallbackList(callbacks)
    if loaded is not None:
        # Resharded (no file of our own): rank 0's holds the replicated counters; the EMA reslices itself.
        callbacks.load_state_dict((loaded.rank_state or loaded.all_rank_states()[0])["callbacks"])
    return callbacks


def run_rank(cfg: CineSceneConfig, env: DistEnv, components: Optional[Components] = None) -> int:
    """Train as rank ``env.rank`` of ``env.world_size``; returns the exit status (0, or the preemption one)."""
    components = components or default_components()
    flag = PreemptionFlag(cfg.launch.preempt_signals).install()
    run_dir = Path(cfg.run.dir)
    setup_logging(cfg.run.log_level, run_dir, env.rank)
    install_secret_filter()
    _quiet_libraries(cfg.run.log_level)
    rng.set_deterministic(cfg.run.deterministic)
    tracker = None
    exit_code = 1
    try:
        components.check_data(cfg)
        init_process_group(env, cfg.parallel.backend, cfg.parallel.timeout_s)
        layout = build_layout(env, cfg.parallel.sequence)
        plan = plan_batch(cfg.train, env.world_size, cfg.parallel.sequence)
        config_yaml = OmegaConf.to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(OmegaConf.structured(cfg)))))
        if layout.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(config_yaml)
            components.prepare_data(cfg)
        checkpoints = CheckpointManager(cfg.checkpoint.dir or run_dir / "checkpoints", cfg.checkpoint,
                                        rank=env.rank, world_size=env.world_size)
        checkpoints.recover()
        _barrier()
        resume_path = checkpoints.resolve_resume(cfg.checkpoint.resume)
        saved = read_trainer_state(resume_path) if resume_path is not None else None
        if saved is not None and int(saved["step"]) >= cfg.train.max_steps:
            _log.info("%s is at step %s of train.max_steps=%d: nothing to do", resume_path, saved["step"],
                      cfg.train.max_steps)
            exit_code = 0
            return exit_code

        if layout.is_main and resume_path is None:
            warn_random_init(cfg.model)
        rng.seed_all(cfg.run.seed)  # identical initial weights on every rank
        reshard = saved is not None and saved.get("world_size") != env.world_size
        if reshard and saved.get("global_batch_size") != plan.global_batch_size:
            _log.warning("resuming at %d ranks: the global batch changes from %s to %d (set "
                         "train.global_batch_size to keep it)", env.world_size, saved.get("global_batch_size"),
                         plan.global_batch_size)
        engine = build_engine(cfg, layout, plan, lambda: components.build_model(cfg),
                              zero_init=use_zero_init(cfg, lambda: components.count_params(cfg)),
                              load_universal=reshard)
        shapes, trainable = parameter_manifest(engine.module)

        state = TrainState(max_steps=cfg.train.max_steps)
        loaded = None
        if resume_path is not None:
            check_compatible(saved, resume_path, params=shapes, trainable=trainable,
                             zero_stage=cfg.parallel.zero_stage)
            loaded = checkpoints.load(engine, resume_path)
            state.step = int(saved["step"])
            state.consumed_samples = int(saved["consumed_samples"])
            state.last_checkpoint = str(resume_path)
        if loaded is not None and loaded.rank_state is not None:
            rng.restore(loaded.rank_state["rng"])
        else:
            rng.seed_all(rng.rank_seed(cfg.run.seed, env.rank) + state.step)

        batches = components.build_batches(cfg, layout.dp_rank, layout.dp_size, plan.micro_batch_size,
                                           state.consumed_samples)
        first = next(batches)
        facts = components.sample_facts(cfg, engine.module, first)
        batches = itertools.chain([first], batches)

        # The W&B run continues only when resuming this run's own checkpoints (not a fork from elsewhere).
        own_run = resume_path is not None and resume_path.parent.resolve() == checkpoints.root.resolve()
        tracker = Tracker(cfg.tracking, run_dir, is_main=layout.is_main, run_name=cfg.run.name,
                          config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                          run_id=saved.get("wandb_run_id") if (saved and own_run) else None,
                          resume_step=state.step)
        callbacks = _build_callbacks(cfg, env, layout, engine, tracker, facts, flag, loaded)
        trainer = Trainer(cfg, engine=engine, layout=layout, plan=plan,
                          objective=FlowMatchingObjective(cfg.train, cfg.model), batches=batches,
                          checkpoints=checkpoints, callbacks=callbacks, state=state, config_yaml=config_yaml,
                          trainer_state_extra=lambda: {"wandb_run_id": tracker.run_id, "params": shapes,
                                                       "trainable": trainable, "run_name": cfg.run.name})
        _log.info("training steps %d..%d of %d (%s)", state.step + 1, cfg.train.max_steps, cfg.train.max_steps,
                  f"resumed from {resume_path}" if resume_path else "fresh start")
        exit_code = trainer.fit()
        _log.info("done at step %d%s", state.step,
                  f" (preempted: exit status {exit_code})" if exit_code else "")
        return exit_code
    finally:
        if tracker is not None:
            tracker.close(exit_code, preempted=exit_code == cfg.launch.preempt_exit_code)
        flag.uninstall()
        destroy_process_group()
