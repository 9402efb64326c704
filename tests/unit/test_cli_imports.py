"""The command line stays fast: parsing every subcommand and validating a config import no torch, so
`--help` and a bad config answer in well under a second (docs/CONTRACTS.md, "Layers")."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from cinescene.launch.cli import main
from cinescene.launch.commands import COMMANDS

smoke = "configs/experiments/smoke.yaml"
benches = ("attention", "loader", "sampling", "checkpoint", "ablation", "step")
cases = [[name.replace("_", "-"), "--help"] for name in COMMANDS] + [
    ["bench", name, "--help"] for name in benches
] + [
    ["train", smoke, "trian.lr=1"],
    ["train", smoke, "--print-config"],
    ["submit", smoke, "train.lr=abc"],
    ["slurm-job", smoke, "trian.lr=1"],
    ["sweep", "configs/sweeps/smoke_lr.yaml", "trian.lr=1"],
    ["model", "info", smoke, "trian.lr=1"],
    ["bench", "loader", smoke, "trian.lr=1"],
    ["bench", "sampling", smoke, "trian.lr=1"],
    ["bench", "step", smoke, "trian.lr=1"],
    ["plan", smoke, "trian.lr=1", "--gpus", "8"],
]
for argv in cases:
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status in (0, 2), (argv, status)
    assert "torch" not in sys.modules, f"{argv} imported torch"
print(len(cases), "cases")
"""


def test_parsing_and_config_validation_import_no_torch(repo_root):
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=repo_root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("cases")
