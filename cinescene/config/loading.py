"""Load, compose, override and validate configs.

Every YAML file under ``configs/`` is a *partial root config*: its top-level
keys are sections (``model:``, ``train:``, ...). A file may list other files
to build on::

    defaults:
      - ../model/tiny.yaml
      - ../data/synthetic.yaml

Paths are relative to the including file; later entries win, and the file's
own keys win over its defaults. Command-line ``a.b=c`` overrides are applied
last. The result is checked against the dataclasses in this package (unknown
keys, types, required values) and then each section's ``validate()`` runs
(ranges and cross-field rules). Any failure raises :class:`ConfigError` with
the full key path; the CLI prints it on one line and exits 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from .base import ConfigError
from .schema import CineSceneConfig

DEFAULTS_KEY = "defaults"


def _read_yaml(path: Path, chain: Tuple[Path, ...]) -> DictConfig:
    """Read one file and, recursively, its ``defaults`` (merged, file last)."""
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(DEFAULTS_KEY, f"include cycle: {cycle}")
    if not path.is_file():
        where = f" (included from {chain[-1]})" if chain else ""
        raise ConfigError("", f"config file not found: {path}{where}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"{path}: invalid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path}: expected a mapping of sections at the top level")
    includes = raw.pop(DEFAULTS_KEY, []) or []
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(DEFAULTS_KEY, f"{path}: expected a list of relative YAML paths")
    merged = OmegaConf.create()
    for inc in includes:
        merged = OmegaConf.merge(merged, _read_yaml((path.parent / inc).resolve(), chain + (path,)))
    return OmegaConf.merge(merged, OmegaConf.create(raw))


def _schema_keys(node: Any) -> List[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys()]
    return []


def _suggest(root: DictConfig, full_key: str) -> str:
    """'did you mean X?' for the first segment of ``full_key`` the schema lacks."""
    node: Any = root
    parts = full_key.split(".")
    for i, part in enumerate(parts):
        keys = _schema_keys(node)
        if part not in keys:
            close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
            if close:
                return f" (did you mean '{'.'.join(parts[:i] + close)}'?)"
            if keys:
                return f" (valid keys here: {', '.join(sorted(keys))})"
            return ""
        node = node[part] if isinstance(node, DictConfig) else None
    return ""


def _field_type(full_key: str) -> Optional[str]:
    """The annotation of the dataclass field at ``full_key`` ('float', 'List[int]')."""
    cls: Any = CineSceneConfig
    annotation: Any = None
    for part in full_key.split("."):
        name, _, index = part.partition("[")
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if name not in hints:
            return None
        annotation = hints[name]
        if index:  # an element of a List[X] field: X is expected
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        cls = annotation
    if annotation is None:
        return None
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def _translate(exc: Exception, schema: DictConfig) -> ConfigError:
    """Turn an OmegaConf exception into a one-line ConfigError with the key path."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
    key = str(key)
    if isinstance(exc, oc_errors.ConfigKeyError):
        return ConfigError(key, "unknown key" + _suggest(schema, key))
    if isinstance(exc, oc_errors.MissingMandatoryValue):
        return ConfigError(key, "a value is required (set it in the YAML or as an override)")
    if isinstance(exc, oc_errors.ValidationError):
        msg = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
        expected = _field_type(key)
        value = getattr(exc, "value", None)
        if expected is not None and value is not None and not dataclasses.is_dataclass(value):
            return ConfigError(key, f"expected {expected}, got {value!r}")
        return ConfigError(key, msg)
    if isinstance(exc, oc_errors.InterpolationResolutionError):
        return ConfigError(key, f"cannot resolve interpolation: {getattr(exc, 'msg', exc)}".splitlines()[0])
    return ConfigError(key, (getattr(exc, "msg", None) or str(exc)).splitlines()[0])


def _parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = list(overrides)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(item, "expected an override of the form key.path=value")
    try:
        return OmegaConf.from_dotlist(items)
    except Exception as exc:  # grammar errors in values
        raise ConfigError("", f"cannot parse overrides: {exc}".splitlines()[0]) from None


def validate_tree(obj: Any, prefix: str = "") -> None:
    """Run ``validate()`` on every dataclass in the tree, children first."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            validate_tree(child, f"{prefix}.{f.name}" if prefix else f.name)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            raise exc.prefixed(prefix) from None


def compose(path: Optional[str | os.PathLike], overrides: Sequence[str] = ()) -> DictConfig:
    """The merged, resolved DictConfig (schema-typed), without running ``validate()``."""
    schema = OmegaConf.structured(CineSceneConfig)
    try:
        cfg = schema.copy()
        if path is not None:
            cfg = OmegaConf.merge(cfg, _read_yaml(Path(path).resolve(), ()))
        for item in overrides:  # one at a time, so a merge error can name its key
            try:
                cfg = OmegaConf.merge(cfg, _parse_overrides([item]))
            except oc_errors.OmegaConfBaseException as exc:
                if getattr(exc, "full_key", None):
                    raise
                # Merge errors (a scalar over a section) carry no key: name the override's.
                key, _, value = item.partition("=")
                raise ConfigError(key, f"expected {_field_type(key) or 'a known key'}, got {value!r}") from None
        OmegaConf.resolve(cfg)
        # Surface missing mandatory values here, with their key path.
        for missing in sorted(OmegaConf.missing_keys(cfg)):
            raise ConfigError(missing, "a value is required (set it in the YAML or as an override)")
    except ConfigError:
        raise
    except oc_errors.OmegaConfBaseException as exc:
        raise _translate(exc, schema) from None
    if path is not None:
        cfg.run.config_path = str(Path(path))
    return cfg


def load_config(path: Optional[str | os.PathLike], overrides: Sequence[str] = ()
                ) -> Tuple[CineSceneConfig, DictConfig]:
    """Compose and validate. Returns the typed config and its DictConfig (for saving/printing)."""
    cfg = compose(path, overrides)
    try:
        obj = OmegaConf.to_object(cfg)
    except oc_errors.OmegaConfBaseException as exc:
        raise _translate(exc, OmegaConf.structured(CineSceneConfig)) from None
    assert isinstance(obj, CineSceneConfig)
    validate_tree(obj)
    return obj, cfg


def to_yaml(cfg: DictConfig | CineSceneConfig) -> str:
    return OmegaConf.to_yaml(cfg if isinstance(cfg, (DictConfig, ListConfig)) else OmegaConf.structured(cfg))


def from_container(data: dict) -> CineSceneConfig:
    """Rebuild a typed config from a plain dict (e.g. one saved in a checkpoint)."""
    cfg = OmegaConf.merge(OmegaConf.structured(CineSceneConfig), OmegaConf.create(data))
    obj = OmegaConf.to_object(cfg)
    validate_tree(obj)
    return obj
