"""Sweep specs: a training config plus a grid (or a list) of overrides, expanded into trials.

A sweep file under ``configs/sweeps/`` has one section, ``sweep:``::

    sweep:
      name: smoke-lr
      base: ../experiments/smoke.yaml      # relative to this file
      overrides: [train.max_steps=20]      # applied to every trial
      grid:                                # cartesian product, keys in file order
        train.lr: [1.0e-3, 3.0e-4]
        train.ema.decay: [0.99, 0.999]

``trials:`` (a list of override lists) replaces ``grid`` when the runs are not a
product. Trial ``i`` trains ``base`` with ``overrides``, then its own overrides,
then the command line's, in ``<run_root>/<i:03d>`` under the run name
``<name>-<i:03d>`` and the W&B group ``<name>``. Every trial's full config is
validated when the sweep is expanded, so a bad grid value fails before anything
is submitted, naming the trial and the key path.
"""
from __future__ import annotations

import difflib
import itertools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf import errors as oc_errors

from .base import ConfigError, require
from .loading import load_config, read_yaml
from .schema import CineSceneConfig


@dataclass
class SweepSpec:
    name: str = ""
    # The training config every trial starts from, relative to the sweep file.
    base: str = ""
    overrides: List[str] = field(default_factory=list)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    trials: List[List[str]] = field(default_factory=list)
    # Parent directory of the trials' run directories.
    run_root: str = "runs/sweeps/${sweep.name}"

    def validate(self) -> None:
        require(bool(self.name) and "/" not in self.name and not self.name.startswith("."), "name",
                "a sweep name usable as a directory name", self.name)
        require(bool(self.base), "base", "the path of a training config", self.base)
        require(not (self.grid and self.trials), "trials", "either `grid` or `trials`, not both",
                "both given")
        for key, values in self.grid.items():
            require(isinstance(values, list) and len(values) > 0, f"grid.{key}", "a non-empty list of values",
                    values)
        for i, trial in enumerate(self.trials):
            require(isinstance(trial, list), f"trials[{i}]", "a list of key.path=value overrides", trial)


@dataclass(frozen=True)
class Trial:
    index: int
    name: str
    run_dir: str
    # This trial's own overrides (from the grid or `trials`), for display.
    varied: List[str]
    # Everything applied on top of the base config, in order.
    overrides: List[str]
    config: CineSceneConfig


def _as_override(key: str, value: Any) -> str:
    """``key=value`` in the dotlist grammar OmegaConf parses back to the same value."""
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"


def _read_spec(path: Path) -> SweepSpec:
    if not path.is_file():
        raise ConfigError("", f"sweep file not found: {path}")
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
        spec.validate()
    except ConfigError as exc:
        raise exc.prefixed("sweep") from None
    return spec


def _varied(spec: SweepSpec) -> List[List[str]]:
    if spec.trials:
        return [list(t) for t in spec.trials]
    if not spec.grid:
        return [[]]
    keys = list(spec.grid)
    return [[_as_override(k, v) for k, v in zip(keys, combo)]
            for combo in itertools.product(*(spec.grid[k] for k in keys))]


def expand_sweep(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[SweepSpec, List[Trial]]:
    """Read a sweep file and validate every trial's full training config."""
    path = Path(path)
    spec = _read_spec(path)
    base = (path.parent / spec.base).resolve()
    if not base.is_file():
        raise ConfigError("sweep.base", f"training config not found: {base}")
    trials: List[Trial] = []
    for i, varied in enumerate(_varied(spec)):
        name = f"{spec.name}-{i:03d}"
        run_dir = f"{spec.run_root}/{i:03d}"
        # The sweep's placement comes first so a trial may still name its own run.dir.
        applied = [f"run.name={name}", f"run.dir={run_dir}", f"tracking.wandb.group={spec.name}",
                   *spec.overrides, *varied, *overrides]
        try:
            cfg, _ = load_config(base, applied)
        except ConfigError as exc:
            shown = " ".join(varied) or "no overrides"
            raise ConfigError(exc.key, f"{exc.message} (sweep trial {i}: {shown})") from None
        trials.append(Trial(i, name, cfg.run.dir, varied, applied, cfg))
    _require_distinct_run_dirs(trials)
    return spec, trials


def _require_distinct_run_dirs(trials: Sequence[Trial]) -> None:
    seen: Dict[str, int] = {}
    for trial in trials:
        first: Optional[int] = seen.setdefault(trial.run_dir, trial.index)
        if first != trial.index:
            raise ConfigError("run.dir", f"sweep trials {first} and {trial.index} would share the run "
                                         f"directory {trial.run_dir}; give each trial its own")


def trial_table(trials: Sequence[Trial]) -> str:
    """One line per trial: index, run directory, the overrides that make it differ."""
    width = max(len(t.run_dir) for t in trials)
    return "".join(f"{t.index:>4}  {t.run_dir:<{width}}  {' '.join(t.varied) or '(base config)'}\n"
                   for t in trials)


__all__ = ["SweepSpec", "Trial", "expand_sweep", "trial_table"]
