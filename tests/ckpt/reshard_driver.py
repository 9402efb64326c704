"""``python -m tests.ckpt.reshard_driver RUN_DIR COPY_DIR [overrides]``: the stand-in training run, which also
saves what it holds right after resuming into ``COPY_DIR`` (another checkpoints directory).

The copy is written by the same save path as any checkpoint, before the first step, so comparing it with
the checkpoint that was resumed shows exactly what loading produced (weights, Adam moments, step counters,
EMA), at any world size. The hook wraps :func:`cinescene.train.entry.resume` from the outside: the
trainer itself has no test seam.
"""

from __future__ import annotations

import sys

from cinescene.distributed.env import detect, strip_local_rank_arg
from cinescene.distributed.spawn import spawn_local_ranks


def _copy_after_resume(copy_dir: str):
    import cinescene.train.entry as entry
    from cinescene.train.callbacks import CallbackList
    from cinescene.train.checkpoint import CheckpointManager, rank_state_now
    from cinescene.train.ema import EMACallback, ShardedEMA

    real = entry.resume

    def resume_and_copy(cfg, layout, plan, checkpoints, build_engine):
        start = real(cfg, layout, plan, checkpoints, build_engine)
        if start.finished:
            return start
        callbacks = CallbackList(
            [
                EMACallback(
                    ShardedEMA(
                        start.engine.module.named_parameters(),
                        cfg.train.ema,
                        shard_index=layout.rank,
                        shard_count=layout.world_size,
                    )
                )
            ]
        )
        start.restore_callbacks(callbacks)
        copy = CheckpointManager(copy_dir, cfg.checkpoint, rank=layout.rank, world_size=layout.world_size)
        copy.save(
            start.engine,
            start.facts.record(start.state, "right after loading", None),
            rank_state_now(layout.rank, callbacks),
            "",
        )
        return start

    entry.resume = resume_and_copy


def main(argv) -> int:
    run_dir, copy_dir, overrides = argv[0], argv[1], argv[2:]
    env = detect()
    if env is None:
        from cinescene.config import load_config

        cfg, _ = load_config(None, ["data.train_shards=unused", *overrides])
        return spawn_local_ranks([sys.executable, "-m", "tests.ckpt.reshard_driver", *argv], cfg.launch.nproc)
    _copy_after_resume(copy_dir)
    from cinescene.train.entry import run_rank
    from tests.train.standins import standin_components, tiny_config

    return run_rank(tiny_config(run_dir, *overrides), env, standin_components())


if __name__ == "__main__":
    sys.exit(main(strip_local_rank_arg(sys.argv[1:])))
