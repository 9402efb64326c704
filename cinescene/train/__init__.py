"""Flow-matching fine-tuning under DeepSpeed: engine, loop, checkpoints, preemption, EMA, tracking.

Entry points: :func:`cinescene.train.launcher.launch` (what ``cinescene train``
runs: spawn local ranks or join torchrun/srun) and
:func:`cinescene.train.entry.run_rank` (one rank's training). Modules:

- ``objective``     condition dropout + model call + loss (:mod:`cinescene.models.flow_matching`),
                    per-step seeded draws (seeds and RNG states: :mod:`cinescene.rng`)
- ``schedule``      warmup + constant/cosine LR as a pure function of the step
- ``optim`` / ``engine``  AdamW parameter groups and the DeepSpeed engine
- ``loop``          the training loop and its step
- ``callbacks``     event hooks; ``ema``, ``guards``, ``metrics``, ``tracking``,
                    ``preemption``, ``checkpoint`` each bring theirs
- ``checkpoint_bench``  ``cinescene bench checkpoint``: saving and loading against ``dd``
"""
