"""One rank of a two-rank CheckpointManager.choose (tests/ckpt/test_resume_collective.py).

``python -m tests.ckpt.choose_driver RANK WORKDIR STORE ROOT RESUME``: joins a gloo group through the
file STORE, works in WORKDIR (so a relative RESUME names another directory on each rank) and prints the
chosen path.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from cinescene.config.checkpoint import CheckpointConfig
from cinescene.log import setup_logging
from cinescene.train.checkpoint import CheckpointManager


def main(rank: int, workdir: str, store: str, root: str, resume: str) -> None:
    os.chdir(workdir)
    setup_logging("INFO", rank=rank)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        chosen = CheckpointManager(Path(root), CheckpointConfig(), rank=rank, world_size=2).choose(resume)
        print(f"chosen {chosen.absolute() if chosen else None}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:6])
