"""`cinescene bench ablation SWEEP [overrides] [--arms 0,1] [--fresh]`: the scene-context ablation, one table.
Library code: cinescene.eval.ablation.

Imports stay light (argparse only): torch and the runs start inside the handler.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablation",
        help="train and evaluate the scene-context arms of a sweep: does the scene help?",
        description="For each trial (arm) of SWEEP (e.g. configs/experiments/ablation/arms.yaml): train it "
        "(timed), evaluate it with `cinescene eval` on eval.data (held-out scenes) and measure the "
        "attention of video tokens on context tokens; print one table (background PSNR/SSIM, "
        "PSNR/SSIM, camera errors, steps, wall time) and write it with everything else to "
        "<run_root>/table.md and ablation.json. Finished arms are reused unless --fresh.",
    )
    p.add_argument("sweep", type=Path, metavar="SWEEP", help="a sweep file whose trials are the arms")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every arm")
    p.add_argument("--arms", default=None, help="comma-separated trial indices to run (default: all)")
    p.add_argument(
        "--heldout-clips",
        type=int,
        default=16,
        help="synthetic held-out clips rendered into eval.data when it is absent (default 16)",
    )
    p.add_argument(
        "--heldout-seed",
        type=int,
        default=1,
        help="their synthetic seed: another seed than data.synth.seed, hence other scenes (default 1)",
    )
    p.add_argument("--nproc", type=int, default=None, help="ranks per training and evaluation (launch.nproc)")
    p.add_argument("--fresh", action="store_true", help="retrain arms that already finished")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run the arms in OUT/<index> and write the table there (default: the sweep's run_root)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.config.base import ConfigError, positive

    arms = None
    if args.arms is not None:
        try:
            arms = sorted({int(a) for a in args.arms.split(",") if a.strip()})
        except ValueError:
            raise ConfigError(
                "--arms", f"expected comma-separated trial indices, got {args.arms!r}"
            ) from None
        if not arms or min(arms) < 0:
            raise ConfigError("--arms", f"expected trial indices >= 0, got {args.arms!r}")
    positive(args.heldout_clips, "--heldout-clips")
    if args.nproc is not None:
        positive(args.nproc, "--nproc")

    from cinescene.eval import ablation
    from cinescene.log import setup_logging

    setup_logging("INFO")
    command = (
        shlex.join(["cinescene", "bench", "ablation", *sys.argv[sys.argv.index("ablation") + 1 :]])
        if "ablation" in sys.argv
        else "cinescene bench ablation"
    )
    results = ablation.run(
        args.sweep,
        args.overrides,
        arms=arms,
        heldout_clips=args.heldout_clips,
        heldout_seed=args.heldout_seed,
        nproc=args.nproc,
        fresh=args.fresh,
        command=command,
        out=args.out,
    )
    from cinescene.eval.ablation_report import table

    sys.stdout.write(table(results))
    return 0
