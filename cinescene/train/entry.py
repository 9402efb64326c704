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

from omegaconf import OmegaConf

from cinescene import rng
from cinescene.ckpt.locate import checkpoints_dir
from cinescene.config.schema import CineSceneConfig
from cinescene.distributed import startup_signals
from cinescene.distributed.batching import plan_batch
from cinescene.distributed.env import DistEnv
from cinescene.distributed.groups import build_layout, destroy_process_group, init_process_group
from cinescene.distributed.slurm_env import restart_count
from cinescene.distributed.spawn import die_with_launcher
from cinescene.log import get_logger, setup_logging
from cinescene.run_dir import RunDir

from .callbacks import CallbackList
from .checkpoint import CheckpointCadence, CheckpointManager, Start, resume
from .components import Components, SampleFacts, default_components
from .ema import EMACallback, ShardedEMA, shadow_sizes
from .engine import build_engine, use_zero_init
from .eval_hook import eval_callbacks
from .guards import NonFiniteGuard
from .loop import Trainer
from .metrics import ThroughputMonitor, device_peak_tflops
from .objective import FlowMatchingObjective
from .preemption import PreemptionCallback, PreemptionFlag, RestartsMetric
from .preflight import planned_checkpoint_bytes, warn_if_it_will_not_fit, warn_random_init
from .tracking import MetricsLogger, Tracker, install_secret_filter, scrub

_log = get_logger("train")


def _quiet_libraries(level: str) -> None:
    logging.getLogger("DeepSpeed").setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    # torch.distributed's deprecation notices fire on every ZeRO collective.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")


def _build_callbacks(
    cfg: CineSceneConfig,
    env: DistEnv,
    layout,
    engine,
    tracker: Tracker,
    facts: SampleFacts,
    flag: PreemptionFlag,
    start: Start,
) -> CallbackList:
    """The callbacks in the order they must see a step: measure, judge, average, then decide and log."""
    peak = cfg.tracking.peak_tflops or device_peak_tflops(cfg.train.precision)
    callbacks = [
        ThroughputMonitor(
            flops_per_sample=facts.flops_per_sample,
            tokens_per_sample=facts.tokens_per_sample,
            peak_tflops=peak,
            devices=env.world_size,
        ),
        NonFiniteGuard(cfg.train.max_consecutive_nonfinite),
    ]
    if cfg.train.ema.enabled:
        callbacks.append(
            EMACallback(
                ShardedEMA(
                    engine.module.named_parameters(),
                    cfg.train.ema,
                    shard_index=env.rank,
                    shard_count=env.world_size,
                )
            )
        )
    callbacks += eval_callbacks(cfg, engine, layout, tracker, flag, callbacks)
    callbacks += [
        PreemptionCallback(flag, cfg.launch.preempt_exit_code, engine.device),
        RestartsMetric(restart_count()),
        CheckpointCadence(cfg.checkpoint),
        MetricsLogger(tracker, cfg.tracking.log_every_steps),
    ]
    callbacks = CallbackList(callbacks)
    start.restore_callbacks(callbacks)
    return callbacks


def run_rank(cfg: CineSceneConfig, env: DistEnv, components: Components | None = None) -> int:
    """Train as rank ``env.rank`` of ``env.world_size``; returns the exit status (0, or the preemption's)."""
    components = components or default_components()
    die_with_launcher()  # a rank our spawner started ends with it (cinescene's CLI did this already)
    flag = PreemptionFlag(cfg.launch.preempt_signals).install()
    startup_signals.hand_over(flag)  # a signal since start-up is a preemption request too
    run_dir = Path(cfg.run.dir)
    setup_logging(cfg.run.log_level, run_dir, env.rank)
    install_secret_filter()
    _quiet_libraries(cfg.run.log_level)
    rng.set_deterministic(cfg.run.deterministic)
    tracker = trainer = None
    exit_code = 1
    try:
        components.check_data(cfg)
        init_process_group(env, cfg.parallel.backend, cfg.parallel.timeout_s)
        layout = build_layout(env, cfg.parallel.sequence)
        plan = plan_batch(cfg.train, env.world_size, cfg.parallel.sequence)
        config_yaml = OmegaConf.to_yaml(
            OmegaConf.create(scrub(OmegaConf.to_container(OmegaConf.structured(cfg))))
        )
        if layout.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            RunDir(run_dir).config.write_text(config_yaml)
            components.prepare_data(cfg)
        if layout.is_main:
            warn_if_it_will_not_fit(cfg, env.world_size)  # before the engine takes the memory
        checkpoints = CheckpointManager(
            checkpoints_dir(cfg),
            cfg.checkpoint,
            rank=env.rank,
            world_size=env.world_size,
        )
        if cfg.checkpoint.background_write:  # its host copy refused before the engine takes memory
            checkpoints.check_planned_host_copy(
                planned_checkpoint_bytes(cfg, env.world_size, env.rank), env.local_world_size
            )
        start = resume(
            cfg,
            layout,
            plan,
            checkpoints,
            lambda: build_engine(
                cfg,
                layout,
                plan,
                lambda: components.build_model(cfg),
                zero_init=use_zero_init(cfg, lambda: components.count_params(cfg)),
            ),
        )
        if start.finished:
            exit_code = 0
            return exit_code
        engine, state = start.engine, start.state
        # checkpoint.async's host copy: measured, printed, refused or reserved before anything else starts.
        ema_sizes = (
            shadow_sizes(engine.module.named_parameters(), shard_index=env.rank, shard_count=env.world_size)
            if cfg.train.ema.enabled
            else []
        )
        checkpoints.prepare_background(engine, ema_sizes, env.local_world_size)
        if layout.is_main and start.path is None:
            warn_random_init(cfg.model)

        batches = components.build_batches(
            cfg, layout.dp_rank, layout.dp_size, plan.micro_batch_size, state.consumed_samples
        )
        first = next(batches)
        facts = components.sample_facts(cfg, engine.module, first)
        batches = itertools.chain([first], batches)

        tracker = Tracker(
            cfg.tracking,
            run_dir,
            is_main=layout.is_main,
            run_name=cfg.run.name,
            config=OmegaConf.to_container(OmegaConf.structured(cfg)),
            run_id=start.wandb_run_id,
            resume_step=state.step,
        )
        callbacks = _build_callbacks(cfg, env, layout, engine, tracker, facts, flag, start)
        trainer = Trainer(
            cfg,
            engine=engine,
            layout=layout,
            plan=plan,
            objective=FlowMatchingObjective(cfg.train, cfg.model),
            batches=batches,
            checkpoints=checkpoints,
            callbacks=callbacks,
            state=state,
            facts=start.facts,
            wandb_run_id=lambda: tracker.run_id,
            config_yaml=config_yaml,
        )
        if flag.agreed(
            engine.device
        ):  # signalled during start-up: stop before the first step, save nothing new
            if layout.is_main:
                _log.warning(
                    "preemption requested (%s) before step %d: nothing new saved, %s; exiting with status %d",
                    flag.signal_name or "signal on another rank",
                    state.step + 1,
                    f"{start.path} stands" if start.path else "no checkpoint yet",
                    cfg.launch.preempt_exit_code,
                )
            exit_code = cfg.launch.preempt_exit_code
            return exit_code
        _log.info(
            "training steps %d..%d of %d (%s)",
            state.step + 1,
            cfg.train.max_steps,
            cfg.train.max_steps,
            f"resumed from {start.path}" if start.path else "fresh start",
        )
        exit_code = trainer.fit()
        _log.info(
            "done at step %d%s", state.step, f" (preempted: exit status {exit_code})" if exit_code else ""
        )
        return exit_code
    finally:
        if tracker is not None:
            tracker.close(
                exit_code,
                preempted=exit_code == cfg.launch.preempt_exit_code,
                checkpoint=trainer.state.last_checkpoint if trainer is not None else None,
            )
        flag.uninstall()
        destroy_process_group()
