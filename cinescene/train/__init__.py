"""Flow-matching fine-tuning under DeepSpeed: engine, loop, checkpoints, preemption, EMA, tracking.

Entry points: :func:`cinescene.train.launcher.launch` (what ``cinescene train``
runs: spawn local ranks or join torchrun/srun) and
:func:`cinescene.train.entry.run_rank` (one rank's training). Modules:

- ``batching``      global batch = micro x accumulation x data-parallel size
- ``flow_matching`` noise grid with shift, targets, Wan/DiffSynth weighting
- ``objective``     condition dropout + model call + loss, per-step seeded draws
- ``schedule``      warmup + constant/cosine LR as a pure function of the step
- ``optim`` / ``engine``  AdamW parameter groups and the DeepSpeed engine
- ``loop``          the training loop and its step
- ``callbacks``     event hooks; ``ema``, ``guards``, ``metrics``, ``tracking``,
                    ``preemption``, ``checkpoint`` each bring theirs
- ``wandb_files``   read offline W&B runs back
"""
