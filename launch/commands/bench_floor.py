"""`cinescene bench floor CONFIG [overrides] [--out DIR]`: the metrics of the held-out ground truth itself.

Library code: cinescene.eval.heldout_floor. Imports stay light (argparse only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_config_args, with_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "floor",
        help="score the held-out ground truth of CONFIG as a generated video: the metrics' floor",
        description="Scores the ground truth of CONFIG's held-out samples (eval.data, chosen as `cinescene "
        "eval` chooses them) with eval.metrics, as if a model had generated it, and prints the table with "
        "the fraction SfM registered: what the metrics can measure at this data scale. With pixel-proxy "
        "data pooled by more than 1, also the ground truth through the proxy (the best a model of this "
        "data can generate). Synthetic held-out data is rendered first when absent (as `cinescene bench "
        "ablation` does). Writes metrics.json, table.md and report.html per floor into --out.",
    )
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="directory for the floors (OUT/<kind>)")
    p.add_argument("--heldout-clips", type=int, default=16, help="synthetic held-out clips (default 16)")
    p.add_argument("--heldout-seed", type=int, default=1, help="their synthetic seed (default 1)")
    p.set_defaults(func=run)


@with_config
def run(args: argparse.Namespace, cfg) -> int:
    from cinescene.config.base import positive

    positive(args.heldout_clips, "--heldout-clips")
    from cinescene.eval.ablation import ensure_heldout
    from cinescene.eval.heldout_floor import evaluate_floor, floor_kinds
    from cinescene.log import setup_logging
    from cinescene.sampling.spec import training_spec

    setup_logging(cfg.run.log_level)
    ensure_heldout(cfg, args.heldout_clips, args.heldout_seed)
    for kind in floor_kinds(training_spec(cfg)):
        evaluate_floor(cfg, args.out / kind, kind)
        sys.stdout.write((args.out / kind / "table.md").read_text())
    return 0
