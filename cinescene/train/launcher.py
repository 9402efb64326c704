"""`cinescene train`: join torchrun/srun, or spawn the local ranks and wait for them.

Under ``torchrun`` / ``deepspeed`` / our own spawner (``RANK`` set) and under
``srun`` (a SLURM job step), this process is one rank and trains. Otherwise
(standalone) it starts ``--nproc`` / ``launch.nproc`` copies of the same
command as local ranks on a free port and returns their combined status; with
one rank it trains in-process. The config was validated before any of this.

Exit status: 0 done; ``launch.preempt_exit_code`` (124) after a preemption
save, the status a SLURM launcher requeues on; 1 for errors.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from cinescene.config.schema import CineSceneConfig
from cinescene.distributed.env import detect, standalone
from cinescene.log import get_logger, setup_logging

from cinescene.data.ensure import check_dataset
from cinescene.eval.heldout import check_present as check_heldout

from .batching import plan_batch
from .preflight import check_initial_weights

_log = get_logger("launch")


def launch(cfg: CineSceneConfig, *, config_path: str, overrides: Sequence[str], nproc: Optional[int] = None) -> int:
    check_initial_weights(cfg.model)   # every rank under torchrun/srun; before spawning otherwise
    env = detect()
    if env is None:
        nproc = nproc or cfg.launch.nproc
        # Batch arithmetic needs the world size: check it here, before any rank starts,
        # together with the data (each rank checks again, for torchrun/srun launches).
        plan_batch(cfg.train, nproc, cfg.parallel.sequence)
        check_dataset(cfg.data)
        check_heldout(cfg)
        if nproc > 1:
            from cinescene.distributed.spawn import spawn_local_ranks

            setup_logging(cfg.run.log_level)
            argv = [sys.executable, "-m", "cinescene", "train", str(config_path), *overrides]
            return spawn_local_ranks(argv, nproc, forward=cfg.launch.preempt_signals,
                                     success_codes=[cfg.launch.preempt_exit_code])
        env = standalone(1)
    from .entry import run_rank

    return run_rank(cfg, env)
