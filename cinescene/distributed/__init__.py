"""Rank discovery (``env``: torchrun / srun / standalone), the local spawner (``spawn``), preemption
signals during start-up (``startup_signals``), process groups with the data-/sequence-parallel layout
(``groups``), the batch split over data-parallel ranks (``batching``), what SLURM tells a job
(``slurm_env``, the one wrapper of ``scontrol``) and the interface gloo binds to (``network``).
Import the submodules: all but ``groups`` stay free of torch so a launcher process starts fast."""
