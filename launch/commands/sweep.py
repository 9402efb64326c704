"""`cinescene sweep SPEC [overrides] --dry-run`: expand a sweep into validated trials."""
from __future__ import annotations

import argparse
import sys

from cinescene.errors import NotLandedError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="launch a sweep as a SLURM job array, and show its status",
                       description="Expand a sweep file (configs/sweeps/) into trials: a grid or a list of "
                                   "overrides over one training config. Every trial's config is validated "
                                   "first; --dry-run lists them.")
    p.add_argument("config", metavar="SPEC", help="sweep YAML with a `sweep:` section (see configs/sweeps/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="training-config overrides applied to every trial, after the sweep's own")
    p.add_argument("--dry-run", action="store_true",
                   help="list the trials (run directory and overrides) and exit; submits nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.config.sweep import expand_sweep, trial_table

    spec, trials = expand_sweep(args.config, args.overrides)
    sys.stdout.write(f"sweep {spec.name}: {len(trials)} trials of {spec.base}\n{trial_table(trials)}")
    if args.dry_run:
        return 0
    raise NotLandedError("submitting a sweep as a SLURM job array arrives with the SLURM launcher; "
                         "nothing was submitted (--dry-run lists the trials)")
