"""Sweep specs: a training config plus a grid, a list or a random sample of overrides, expanded into trials.

A sweep file under ``configs/sweeps/`` has one section, ``sweep:``::

    sweep:
      name: smoke-lr
      base: ../experiments/smoke.yaml      # relative to this file
      overrides: [train.max_steps=20]      # applied to every trial
      grid:                                # cartesian product, keys in file order
        train.lr: [1.0e-3, 3.0e-4]
        train.ema.decay: [0.99, 0.999]

Instead of ``grid``: ``trials:`` (a list of override lists) when the runs are not
a product, or a random search -- ``sample: N`` trials drawn (with ``seed``) from
``space:``, where each key has one distribution::

      sample: 8
      seed: 0
      space:
        train.lr: {log_uniform: [1.0e-4, 1.0e-2]}
        train.ema.decay: {choice: [0.99, 0.999]}
        train.warmup_steps: {int_uniform: [0, 20]}

The draws are sequential, so raising ``sample`` keeps the trials drawn before.

A trial trains ``base`` with ``overrides``, then its own overrides, then the
command line's. Its run directory is ``<run_root>/<signature>`` and its run name
``<name>-<signature>``, where the signature is a hash of the trial's whole
resolved config -- every value that differs from the schema's default, whether
the base file, the sweep or the command line set it, by key and resolved value
(not order or spelling); only ``run.config_path`` (where the base file lies) is
left out. So editing the base or the grid never maps a new trial onto an old
trial's directory (nor do two sweep files of one name with different bases),
an unchanged trial finds its own again, and a key added to the schema with a
default changes no signature. All trials share the W&B group ``<name>``.

A sweep has at most MAX_TRIALS trials, counted before anything is expanded (a
grid's product, a sample larger than its space is one line at once). Every
trial's full config is validated when the sweep is expanded, so a bad value
fails before anything is submitted, naming the trial and the key path; the
run root and every trial's output directories must be places of their own
(:mod:`cinescene.config.paths`), and no two trials may resolve to one run
directory (``runs/a`` and ``./runs/a/`` are one).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf import errors as oc_errors

from .base import ConfigError, at_most, non_negative, require
from .loading import check_element_types, compose, load_config, read_yaml
from .paths import check_output_location, check_run_locations, kind_problem, resolved
from .schema import CineSceneConfig

SIGNATURE_LENGTH = 10
# How many draws a random search may spend finding `sample` distinct trials.
MAX_DRAWS_PER_SAMPLE = 100
# The most trials one sweep may have: one job array (SLURM's default MaxArraySize is 1001).
MAX_TRIALS = 1000
# Not part of a trial's identity: where its base file lies, not what it trains.
UNIDENTIFYING_KEYS = ("run.config_path",)


def _draw_choice(rng: random.Random, args: list[Any]) -> Any:
    return args[rng.randrange(len(args))]


def _draw_uniform(rng: random.Random, args: list[Any]) -> float:
    return float(f"{rng.uniform(args[0], args[1]):.4g}")


def _draw_log_uniform(rng: random.Random, args: list[Any]) -> float:
    return float(f"{math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))):.4g}")


def _draw_int_uniform(rng: random.Random, args: list[Any]) -> int:
    return rng.randint(int(args[0]), int(args[1]))


# The distributions of `space:` entries: name -> draw(rng, args). Floats keep 4 significant digits.
DISTRIBUTIONS: dict[str, Callable[[random.Random, list[Any]], Any]] = {
    "choice": _draw_choice,
    "uniform": _draw_uniform,
    "log_uniform": _draw_log_uniform,
    "int_uniform": _draw_int_uniform,
}


def _check_distribution(key: str, entry: Any) -> None:
    require(
        isinstance(entry, dict) and len(entry) == 1 and next(iter(entry)) in DISTRIBUTIONS,
        key,
        f"one distribution {{kind: [args]}} with kind one of {sorted(DISTRIBUTIONS)}",
        entry,
    )
    kind, args = next(iter(entry.items()))
    if kind == "choice":
        require(isinstance(args, list) and len(args) > 0, f"{key}.choice", "a non-empty list of values", args)
        return
    numeric = (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in args)
    )
    require(numeric and args[0] <= args[1], f"{key}.{kind}", "[low, high] with low <= high", args)
    if kind == "log_uniform":
        require(args[0] > 0, f"{key}.{kind}", "a range of positive numbers", args)
    if kind == "int_uniform":
        require(all(float(a).is_integer() for a in args), f"{key}.{kind}", "a range of integers", args)


@dataclass
class SweepSpec:
    name: str = ""
    # The training config every trial starts from, relative to the sweep file.
    base: str = ""
    overrides: list[str] = field(default_factory=list)
    # One of: grid (cartesian product), trials (explicit override lists), sample + space (random search).
    grid: dict[str, list[Any]] = field(default_factory=dict)
    trials: list[list[str]] = field(default_factory=list)
    sample: int = 0
    # Seed of the random search: the same seed draws the same trials.
    seed: int = 0
    space: dict[str, Any] = field(default_factory=dict)
    # Parent directory of the trials' run directories.
    run_root: str = "runs/sweeps/${sweep.name}"

    def validate(self) -> None:
        require(
            bool(self.name) and "/" not in self.name and not self.name.startswith("."),
            "name",
            "a sweep name usable as a directory name",
            self.name,
        )
        require(bool(self.base), "base", "the path of a training config", self.base)
        kinds = [
            k
            for k, given in (
                ("grid", self.grid),
                ("trials", self.trials),
                ("sample", self.sample or self.space),
            )
            if given
        ]
        require(
            len(kinds) <= 1,
            kinds[-1] if kinds else "grid",
            "one of `grid`, `trials` or `sample` + `space`",
            f"{' and '.join(kinds)} given",
        )
        for key, values in self.grid.items():
            require(
                isinstance(values, list) and len(values) > 0,
                f"grid.{key}",
                "a non-empty list of values",
                values,
            )
        for i, trial in enumerate(self.trials):
            require(isinstance(trial, list), f"trials[{i}]", "a list of key.path=value overrides", trial)
        non_negative(self.sample, "sample")
        require(
            bool(self.sample) == bool(self.space),
            "sample" if self.space else "space",
            "`sample: N` (N > 0) together with a `space:` to draw from",
            self.sample or None,
        )
        for key, entry in self.space.items():
            _check_distribution(f"space.{key}", entry)


@dataclass(frozen=True)
class Trial:
    index: int
    # Hash of the trial's overrides (keys and resolved values): names its run directory.
    signature: str
    name: str
    run_dir: str
    # This trial's own overrides (from the grid, `trials` or the sample), for display.
    varied: list[str]
    # Everything applied on top of the base config, in order.
    overrides: list[str]
    config: CineSceneConfig


def as_override(key: str, value: Any) -> str:
    """``key=value`` in the dotlist grammar, parsed back to exactly ``value`` (strings quoted as JSON)."""
    if isinstance(value, str):
        return f"{key}={json.dumps(value)}"
    flow = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return f"{key}={flow.strip().removesuffix('...').strip()}"


def signature(values: dict[str, Any]) -> str:
    """A short stable hash of {key: resolved value}: the trial's identity, whatever the spelling."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:SIGNATURE_LENGTH]


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a config tree; lists are values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    found: dict[str, Any] = {}
    for key, value in tree.items():
        found.update(_leaves(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return found


_DEFAULT_LEAVES: dict[str, Any] = {}


def identity(base: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """What makes a trial the trial it is: every resolved value of ``base`` + ``overrides`` that differs from
    the schema's default (1e-3, 0.001 and "1e-3" agree), by dotted key."""
    if not _DEFAULT_LEAVES:
        _DEFAULT_LEAVES.update(
            _leaves(OmegaConf.to_container(OmegaConf.structured(CineSceneConfig), resolve=True))
        )
    values = _leaves(OmegaConf.to_container(compose(base, overrides), resolve=True))
    return {
        key: value
        for key, value in values.items()
        if key not in UNIDENTIFYING_KEYS and (key not in _DEFAULT_LEAVES or _DEFAULT_LEAVES[key] != value)
    }


def _read_spec(path: Path) -> SweepSpec:
    problem = kind_problem(path, "file")
    if problem is not None:
        raise ConfigError("", f"sweep file {path} {problem}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict) or set(raw) != {"sweep"}:
        raise ConfigError("", f"{path}: expected one top-level section `sweep:`, got {sorted(raw) or 'none'}")
    try:
        node = OmegaConf.merge(OmegaConf.structured({"sweep": SweepSpec()}), OmegaConf.create(raw))
        OmegaConf.resolve(node)
        spec = OmegaConf.to_object(node.sweep)
    except oc_errors.ConfigKeyError as exc:
        key = str(getattr(exc, "full_key", "") or "sweep")
        close = difflib.get_close_matches(key.rpartition(".")[2], [f.name for f in fields(SweepSpec)], n=1)
        hint = f" (did you mean 'sweep.{close[0]}'?)" if close else ""
        raise ConfigError(key, f"unknown key{hint}") from None
    except oc_errors.OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "sweep")
        raise ConfigError(key, (getattr(exc, "msg", None) or str(exc)).splitlines()[0]) from None
    try:
        check_element_types(spec)
        spec.validate()
    except ConfigError as exc:
        raise exc.prefixed("sweep") from None
    check_output_location(spec.run_root, "sweep.run_root")
    return spec


def _space_size(spec: SweepSpec) -> float:
    """How many distinct trials ``space`` can draw (inf when a distribution is continuous)."""
    size = 1.0
    for entry in spec.space.values():
        kind, args = next(iter(entry.items()))
        if kind == "choice":
            size *= len(args)
        elif kind == "int_uniform":
            size *= int(args[1]) - int(args[0]) + 1
        elif args[0] != args[1]:
            return math.inf
    return size


def trial_count(spec: SweepSpec) -> int:
    """How many trials the spec expands to, computed without expanding it; at most MAX_TRIALS."""
    if spec.trials:
        count = len(spec.trials)
    elif spec.sample:
        space = _space_size(spec)
        if spec.sample > space:
            raise ConfigError(
                "sweep.sample",
                f"the space holds fewer than {spec.sample} distinct trials (only {int(space)}); "
                "lower `sample` or widen `space`",
            )
        count = spec.sample
    else:
        count = math.prod(len(values) for values in spec.grid.values())
    key = "sweep.trials" if spec.trials else "sweep.sample" if spec.sample else "sweep.grid"
    at_most(count, key, MAX_TRIALS, f"trials of one sweep; this one has {count}: split it")
    return count


def _sampled(spec: SweepSpec) -> list[list[str]]:
    rng = random.Random(spec.seed)
    drawn: list[list[str]] = []
    seen = set()
    for _ in range(spec.sample * MAX_DRAWS_PER_SAMPLE):
        trial = [
            as_override(key, DISTRIBUTIONS[kind](rng, args))
            for key, entry in spec.space.items()
            for kind, args in entry.items()
        ]
        if tuple(trial) not in seen:
            seen.add(tuple(trial))
            drawn.append(trial)
            if len(drawn) == spec.sample:
                return drawn
    raise ConfigError(
        "sweep.sample",
        f"the space holds fewer than {spec.sample} distinct trials "
        f"({len(drawn)} found); lower `sample` or widen `space`",
    )


def _varied(spec: SweepSpec) -> list[list[str]]:
    if spec.trials:
        return [list(t) for t in spec.trials]
    if spec.sample:
        return _sampled(spec)
    if not spec.grid:
        return [[]]
    keys = list(spec.grid)
    return [
        [as_override(k, v) for k, v in zip(keys, combo)]
        for combo in itertools.product(*(spec.grid[k] for k in keys))
    ]


def base_config(path: str | os.PathLike, spec: SweepSpec) -> Path:
    """The training config of a sweep file's trials (``base`` is relative to the sweep file)."""
    return resolved(Path(path).parent / spec.base)


def expand_sweep(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[SweepSpec, list[Trial]]:
    """Read a sweep file and validate every trial's full training config."""
    path = Path(path)
    spec = _read_spec(path)
    base = base_config(path, spec)
    problem = kind_problem(base, "file")
    if problem is not None:
        raise ConfigError("sweep.base", f"training config {base} {problem}")
    trial_count(spec)
    trials: list[Trial] = []
    for i, varied in enumerate(_varied(spec)):
        own = [*spec.overrides, *varied, *overrides]
        try:
            sig = signature(identity(base, own))
            name = f"{spec.name}-{sig}"
            # The sweep's placement comes first so a trial may still name its own run.dir.
            applied = [
                f"run.name={name}",
                f"run.dir={spec.run_root}/{sig}",
                f"tracking.wandb.group={spec.name}",
                *own,
            ]
            cfg, _ = load_config(base, applied)
            check_run_locations(cfg)
        except ConfigError as exc:
            shown = " ".join(varied) or "no overrides"
            raise ConfigError(exc.key, f"{exc.message} (sweep trial {i}: {shown})") from None
        trials.append(Trial(i, sig, name, cfg.run.dir, varied, applied, cfg))
    _require_distinct_run_dirs(trials)
    return spec, trials


def _require_distinct_run_dirs(trials: Sequence[Trial]) -> None:
    seen: dict[Path, Trial] = {}
    for trial in trials:
        first = seen.setdefault(resolved(trial.run_dir), trial)
        if first is not trial:
            same = "" if first.run_dir == trial.run_dir else f" ({first.run_dir} and {trial.run_dir} are one)"
            raise ConfigError(
                "run.dir",
                f"sweep trials {first.index} and {trial.index} would share the run "
                f"directory {resolved(trial.run_dir)}{same}; give each trial its own",
            )


__all__ = [
    "SweepSpec",
    "Trial",
    "DISTRIBUTIONS",
    "as_override",
    "base_config",
    "expand_sweep",
    "identity",
    "signature",
    "trial_count",
]
