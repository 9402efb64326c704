"""`cinescene sweep SPEC [overrides] [--max-parallel K] [--dry-run]` and `cinescene sweep status SPEC|DIR`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STATUS = "status"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="launch a sweep as a SLURM job array, and show its status",
        usage="cinescene sweep SPEC [KEY=VALUE ...] [--max-parallel K] [--dry-run]\n"
        "       cinescene sweep status SPEC|DIR [KEY=VALUE ...] [--json]",
        description="Expand a sweep file (configs/sweeps/) into trials -- a grid, a list or a "
        "random sample of overrides over one training config -- validate every "
        "trial's config, and submit the unfinished ones as one SLURM job array. "
        "Finished trials and trials still queued are skipped, so submitting again "
        "resubmits only what is left (each trial resumes from its checkpoints). "
        "`sweep status` prints one row per trial.",
    )
    p.add_argument(
        "config", metavar="SPEC", help="sweep YAML with a `sweep:` section (see configs/sweeps/), or `status`"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="training-config overrides applied to every trial, after the sweep's own "
        "(for `status`: SPEC|DIR, then the same overrides as when submitting)",
    )
    p.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="K",
        help="run at most K trials at once (the array's %%K throttle)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the trials and print the sbatch call; submit nothing"
    )
    p.add_argument("--json", action="store_true", help="status: one JSON object per trial")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cinescene.config.base import require

    if args.config == STATUS:
        require(bool(args.overrides), "SPEC|DIR", "a sweep file or a sweep's run_root after `status`", None)
        return show_status(args.overrides[0], args.overrides[1:], as_json=args.json)
    require(
        args.max_parallel is None or args.max_parallel >= 1,
        "--max-parallel",
        "a value >= 1",
        args.max_parallel,
    )
    return submit(args)


def submit(args: argparse.Namespace) -> int:
    from cinescene.config.sweep import expand_sweep
    from cinescene.slurm import sweeps

    spec, trials = expand_sweep(args.config, args.overrides)
    run_root = Path(spec.run_root)
    if args.dry_run:
        return _plan_and_submit(args, spec, trials, run_root)
    with sweeps.sweep_lock(run_root):  # two submissions of one sweep must not both submit a trial
        return _plan_and_submit(args, spec, trials, run_root)


def _plan_and_submit(args: argparse.Namespace, spec, trials, run_root: Path) -> int:
    from cinescene.config.sweep import base_config
    from cinescene.run_dir import RunDir
    from cinescene.slurm import sweeps

    plans = sweeps.plan(trials)
    width = max(len(t.run_dir) for t in trials)
    _print(
        trials,
        f"sweep {spec.name}: {len(trials)} trials of {spec.base}\n"
        + "".join(
            f"{p.trial.index:>4}  {p.trial.run_dir:<{width}}  {p.action:<8}  {p.detail:<16}  "
            f"{' '.join(p.trial.varied) or '(base config)'}\n"
            for p in plans
        ),
    )
    todo = [p.trial for p in plans if p.action == "submit"]
    if not todo:
        print("nothing to submit: every trial is finished or still queued")
        return 0
    if args.dry_run:
        table = RunDir(run_root).slurm / "array-<time>.json"
        sys.stdout.write(sweeps.array_submission(spec, todo, run_root, table, args.max_parallel).describe())
        return 0
    job_id = sweeps.submit_array(spec, str(base_config(args.config, spec)), todo, run_root, args.max_parallel)
    throttle = f", at most {args.max_parallel} at a time" if args.max_parallel else ""
    print(f"submitted array job {job_id}: {len(todo)} trials{throttle}; each logs to <run dir>/slurm/")
    return 0


def show_status(target: str, overrides, as_json: bool) -> int:
    from cinescene.slurm import sweeps

    path = Path(target)
    trials = []
    if path.is_dir():
        entries = sweeps.entries_of_dir(path)
        title = f"{path}: {len(entries)} trials"
    else:
        from cinescene.config.sweep import expand_sweep

        spec, trials = expand_sweep(path, overrides)
        entries = sweeps.entries_of_trials(trials)
        title = f"sweep {spec.name}: {len(entries)} trials in {spec.run_root}"
    rows = sweeps.status(entries)
    if as_json:
        _print(trials, "".join(json.dumps(r.as_dict()) + "\n" for r in rows))
    else:
        _print(trials, f"{title}\n{sweeps.status_table(rows)}")
    return 0


def _print(trials, text: str) -> None:
    """Print a table of trials with secrets masked: the environment's and the trials' credential values."""
    from omegaconf import OmegaConf

    from cinescene.secrets import mask_text, secret_values

    configs = [OmegaConf.to_container(OmegaConf.structured(t.config)) for t in trials]
    sys.stdout.write(mask_text(text, secret_values(config=configs)))
