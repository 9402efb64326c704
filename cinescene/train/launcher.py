"""`cinescene train`: join torchrun/srun, or spawn the local ranks and wait for them.

Under ``torchrun`` / ``deepspeed`` / our own spawner (``RANK`` set) and under
``srun`` (a SLURM job step), this process is one rank and trains. Otherwise
(standalone) it starts ``--nproc`` / ``launch.nproc`` copies of the same
command as local ranks on a free port and returns their combined status; with
one rank it trains in-process. The config was validated before any of this.

Around that, in this order, before anything slow is imported:

- preemption signals are narrowed to ``launch.preempt_signals`` (they have
  been recorded since argument parsing: :mod:`cinescene.distributed.startup_signals`);
- the run directory and the checkpoint directory are locked (:mod:`.run_lock`):
  by this process when it is the standalone launcher (its ranks inherit a
  flock), by rank 0 under torchrun / deepspeed / srun; a second run on either
  directory fails here;
- a standalone launcher signalled before it started its ranks starts none;
- each rank sends library output to ``<run.dir>/logs/rank<R>.log``, keeping
  the console for our log lines (unless ``--verbose`` / ``run.log_level=DEBUG``),
  and clears the build locks of torch extensions that killed processes left
  (:mod:`.build_locks`) before DeepSpeed loads its ops.

Exit status: 0 done; ``launch.preempt_exit_code`` (124) after a preemption
save (or a preemption before the first step: nothing new saved), the status a
SLURM launcher requeues on; 1 for errors; 2 for a bad config or usage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cinescene.config.schema import CineSceneConfig
from cinescene.data.ensure import check_dataset
from cinescene.distributed import startup_signals
from cinescene.distributed.batching import plan_batch
from cinescene.distributed.env import DistEnv, detect, standalone
from cinescene.distributed.network import bind_gloo_towards_master
from cinescene.distributed.spawn import check_local_ranks, spawn_local_ranks
from cinescene.eval.heldout import check_present as check_heldout
from cinescene.log import get_logger, send_output_to, setup_logging, show_progress_bars, verbose
from cinescene.run_dir import RunDir

from .build_locks import clear_stale_build_locks
from .preflight import check_initial_weights, check_patch_grid
from .run_lock import hold_run

_log = get_logger("launch")


def _preempted_before_start(cfg: CineSceneConfig, name: str) -> int:
    _log.warning(
        "preemption requested (%s) before any rank started: nothing new saved, the run directory's "
        "last checkpoint stands; exiting with status %d",
        name,
        cfg.launch.preempt_exit_code,
    )
    return cfg.launch.preempt_exit_code


def _run_this_rank(cfg: CineSceneConfig, env: DistEnv) -> int:
    if env.rank == 0 and env.launcher != "standalone":
        hold_run(cfg)  # torchrun / deepspeed / srun: rank 0 holds the run and checkpoint directories
    if not verbose(cfg.run.log_level):
        send_output_to(RunDir(cfg.run.dir).rank_log(env.rank))
    setup_logging(cfg.run.log_level, cfg.run.dir, env.rank)
    clear_stale_build_locks()  # a rank killed while DeepSpeed loaded its ops would hang every later start
    if env.launcher == "srun":
        bind_gloo_towards_master(env.master_addr)  # nodes must reach each other, not their loopback
    from .entry import run_rank  # torch and DeepSpeed from here on: their chatter goes to the file

    # A rank never dies of a preemption signal: startup_signals records them until the trainer's flag
    # takes them, and records them again once the rank has saved and is leaving (the flag restores
    # that handler) -- srun (--kill-on-bad-exit) and SLURM keep sending them.

    return run_rank(cfg, env)


def launch(
    cfg: CineSceneConfig, *, config_path: str, overrides: Sequence[str], nproc: int | None = None
) -> int:
    startup_signals.configure(cfg.launch.preempt_signals)
    show_progress_bars(cfg.run.progress)
    check_initial_weights(cfg.model)  # every rank under torchrun/srun; before spawning otherwise
    check_patch_grid(cfg)
    env = detect()
    if env is not None:
        return _run_this_rank(cfg, env)
    key = "launch.nproc" if nproc is None else "--nproc"
    nproc = nproc or cfg.launch.nproc
    # Batch arithmetic needs the world size: check it here, before any rank starts,
    # together with the data (each rank checks again, for torchrun/srun launches).
    check_local_ranks(nproc, cfg.parallel.backend, key)
    plan_batch(cfg.train, nproc, cfg.parallel.sequence)
    check_dataset(cfg.data)
    check_heldout(cfg)
    locks = hold_run(cfg)
    # A preemption signal so far means no rank starts at all; a later one reaches the ranks (the spawner
    # forwards what arrives while it starts them) or this process's trainer (run_rank takes it over).
    if startup_signals.requested():
        setup_logging(cfg.run.log_level)
        return _preempted_before_start(cfg, startup_signals.requested())
    if nproc == 1:
        return _run_this_rank(cfg, standalone(1))

    setup_logging(cfg.run.log_level)
    argv = [sys.executable, "-m", "cinescene", "train", str(config_path), *overrides]
    return spawn_local_ranks(
        argv,
        nproc,
        forward=cfg.launch.preempt_signals,
        success_codes=[cfg.launch.preempt_exit_code],
        keep_fds=[lock.fd for lock in locks if lock.kind == "flock"],
    )
