"""Rank discovery (``env``: torchrun / srun / standalone), the local spawner (``spawn``), and process
groups with the data-/sequence-parallel layout (``groups``). Import the submodules: ``env`` and
``spawn`` stay free of torch so a launcher process starts fast."""
