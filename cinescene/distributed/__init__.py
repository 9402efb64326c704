"""Rank discovery (``env``: torchrun / srun / standalone), the local spawner (``spawn``), preemption
signals during start-up (``startup_signals``), and process groups with the data-/sequence-parallel
layout (``groups``). Import the submodules: ``env``, ``spawn`` and ``startup_signals`` stay free of
torch so a launcher process starts fast."""
