"""``python -m tests.train.standin_train RUN_DIR [overrides]``: `cinescene train` with the stand-ins.

The same launch path as the CLI (local spawner, signal forwarding, exit
statuses, checkpoints, W&B) around the tiny model and in-memory data of
:mod:`tests.train.standins`, so the multi-rank tests take seconds.
"""

from __future__ import annotations

import sys

from cinescene.config import load_config
from cinescene.distributed.env import detect, standalone, strip_local_rank_arg
from cinescene.distributed.spawn import spawn_local_ranks
from cinescene.errors import CineSceneError


def main(argv) -> int:
    run_dir, overrides = argv[0], argv[1:]
    env = detect()
    if env is None:
        # The launcher process stays light (no torch): validate the config only.
        cfg, _ = load_config(None, ["data.train_shards=unused", *overrides])
        if cfg.launch.nproc > 1:
            return spawn_local_ranks(
                [sys.executable, "-m", "tests.train.standin_train", *argv],
                cfg.launch.nproc,
                forward=cfg.launch.preempt_signals,
                success_codes=[cfg.launch.preempt_exit_code],
            )
    from cinescene.train.entry import run_rank

    from .standins import standin_components, tiny_config

    cfg = tiny_config(run_dir, *overrides)
    try:
        return run_rank(cfg, env or standalone(1), standin_components())
    except CineSceneError as exc:
        print(f"standin_train: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(strip_local_rank_arg(sys.argv[1:])))
