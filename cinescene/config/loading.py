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
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from .base import ConfigError, finite
from .paths import kind_problem, resolved
from .schema import CineSceneConfig

DEFAULTS_KEY = "defaults"
# The most values (scalars, lists and mappings, aliases expanded) one YAML file may hold. Configs hold a few
# hundred and a 1000-trial sweep file a few thousand; an alias bomb (each alias repeating the last one) grows
# exponentially in its bytes, and OmegaConf copies every expanded value (about 0.2 ms each).
MAX_YAML_VALUES = 10_000


class _RecursiveAlias(Exception):
    def __init__(self, key: str, line: int):
        super().__init__(key)
        self.key, self.line = key, line


class _TooLarge(Exception):
    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


class _DuplicateKey(Exception):
    def __init__(self, key: str, first_line: int, line: int):
        super().__init__(key)
        self.key, self.first_line, self.line = key, first_line, line


def _check_unique_keys(
    node: yaml.Node, prefix: str = "", done: set | None = None, ancestors: tuple[int, ...] = ()
) -> None:
    """Every mapping of the document holds each key once (PyYAML would keep the last silently),
    and no alias refers to a node that contains it (a recursive document never ends)."""
    done = set() if done is None else done
    if id(node) in ancestors:
        raise _RecursiveAlias(prefix.rstrip(".") or "<root>", node.start_mark.line + 1)
    if id(node) in done:  # an alias of a node already checked
        return
    ancestors = ancestors + (id(node),)
    if isinstance(node, yaml.MappingNode):
        lines: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides by design
                _check_unique_keys(value_node, prefix, done, ancestors)
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            line = key_node.start_mark.line + 1
            if key in lines:
                raise _DuplicateKey(prefix + key, lines[key], line)
            lines[key] = line
            _check_unique_keys(value_node, f"{prefix}{key}.", done, ancestors)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{prefix.rstrip('.')}[{i}].", done, ancestors)
    done.add(id(node))


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` holds once every alias is expanded (each node counted once per use, in time
    linear in the document: a node's size is computed once); stops at MAX_YAML_VALUES."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    total = 1
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_YAML_VALUES:
            raise _TooLarge(total)
    sizes[id(node)] = total
    return total


def shown(path: Path) -> Path:
    """``path`` as a user names it in messages: relative to the working directory when under it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def read_yaml(path: Path) -> Any:
    """The one reader of every YAML file the config layer reads (training configs, sweep files).

    UTF-8 text only (a BOM is fine), PyYAML's safe constructors only, no
    mapping may hold a key twice, and at most MAX_YAML_VALUES values with
    aliases expanded (checked on the parsed nodes, before anything is built
    from them: an alias bomb is refused in milliseconds). Every problem is one
    ConfigError naming the file and where in it (byte offset, line, key path).
    """
    name = shown(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "", f"{name}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}, line {line})"
        ) from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks that every character is printable
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node)
        _expanded_size(node, {})
        return loader.construct_document(node)
    except _DuplicateKey as dup:
        raise ConfigError(
            dup.key,
            f"duplicate key in {name} (lines {dup.first_line} and {dup.line}); "
            "a mapping may hold each key once",
        ) from None
    except _RecursiveAlias as rec:
        raise ConfigError(
            rec.key,
            f"{name}: an alias at line {rec.line} refers to a node that contains it (a recursive document)",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: where, by character offset
            line = text[: exc.position].count("\n") + 1
        at = f" at line {line}" if line is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("", f"{name}: invalid YAML{at}: {problem}") from None
    except _TooLarge:
        raise ConfigError(
            "",
            f"{name}: holds more than {MAX_YAML_VALUES} values once its aliases are expanded "
            "(an alias repeating another alias grows exponentially); write the values out",
        ) from None
    except RecursionError:
        raise ConfigError("", f"{name}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _section_fields(cls: Any) -> dict:
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def check_sections(tree: Any, cls: Any = CineSceneConfig, prefix: str = "", where: str = "") -> None:
    """A section (a dataclass field: ``train``, ``train.flow``) must be a mapping, not a scalar or a list.

    OmegaConf's own merge error for ``train: 5`` names neither key nor file. A
    null section (``train:`` with every key commented out) counts as empty and is dropped.
    """
    if not isinstance(tree, dict):
        return
    fields = _section_fields(cls)
    for key in list(tree):
        child = fields.get(str(key))
        if child is None or not dataclasses.is_dataclass(child):
            continue  # unknown keys and plain values: OmegaConf names them with their key path
        value = tree[key]
        path = f"{prefix}{key}"
        if value is None:
            del tree[key]
        elif not isinstance(value, dict):
            examples = ", ".join(f"{path}.{name}" for name in list(_section_fields(child))[:2])
            raise ConfigError(path, f"expected a section of keys ({examples}, ...), got {value!r}{where}")
        else:
            check_sections(value, child, f"{path}.", where)


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> DictConfig:
    """Read one file and, recursively, its ``defaults`` (merged, file last)."""
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(DEFAULTS_KEY, f"include cycle: {cycle}")
    problem = kind_problem(path, "file")
    if problem is not None:
        where = f" (included from {chain[-1]})" if chain else ""
        raise ConfigError("", f"config file {shown(path)} {problem}{where}")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{shown(path)}: expected a mapping of sections at the top level")
    includes = raw.pop(DEFAULTS_KEY, []) or []
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(DEFAULTS_KEY, f"{shown(path)}: expected a list of relative YAML paths")
    check_sections(raw, where=f" in {shown(path)}")
    merged = OmegaConf.create()
    for inc in includes:
        merged = OmegaConf.merge(merged, _read_yaml(resolved(path.parent / inc), chain + (path,)))
    return OmegaConf.merge(merged, OmegaConf.create(raw))


def _schema_keys(node: Any) -> list[str]:
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


def field_type(full_key: str) -> str | None:
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
        expected = field_type(key)
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
        parsed = OmegaConf.from_dotlist(items)
    except Exception as exc:  # grammar errors in values
        raise ConfigError("", f"cannot parse overrides: {exc}".splitlines()[0]) from None
    tree = OmegaConf.to_container(parsed)
    check_sections(tree)
    return OmegaConf.create(tree)


_SCALARS = (str, int, float, bool)


def _element_ok(value: Any, expected: type) -> bool:
    if expected is bool or isinstance(value, bool):
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def check_element_types(obj: Any, prefix: str = "") -> None:
    """Every element of a ``list[X]`` field (X a scalar type) is an X: OmegaConf lets a nested list or a
    mapping through as an element (``tags=[[a], {b: 1}]``)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        annotation = hints[f.name]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is not list or not args or args[0] not in _SCALARS:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        for i, item in enumerate(value or []):
            if not _element_ok(item, args[0]):
                raise ConfigError(f"{key}[{i}]", f"expected {args[0].__name__}, got {item!r}")


def _check_finite(obj: Any, prefix: str) -> None:
    """Every float field (and float list element) of the section holds a finite value."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                finite(item, f"{key}[{i}]")
        else:
            finite(value, key)


def validate_tree(obj: Any, prefix: str = "") -> None:
    """Run ``validate()`` on every dataclass in the tree, children first, after the finite-float check."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            validate_tree(child, f"{prefix}.{f.name}" if prefix else f.name)
    check_element_types(obj, prefix)
    _check_finite(obj, prefix)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError as exc:
            raise exc.prefixed(prefix) from None


def _compose(base: DictConfig | None, overrides: Sequence[str]) -> DictConfig:
    """The schema, ``base`` merged over it, then each override; resolved and checked for missing values."""
    schema = OmegaConf.structured(CineSceneConfig)
    try:
        cfg = schema.copy()
        if base is not None:
            cfg = OmegaConf.merge(cfg, base)
        for item in overrides:  # one at a time, so a merge error can name its key
            try:
                cfg = OmegaConf.merge(cfg, _parse_overrides([item]))
            except oc_errors.OmegaConfBaseException as exc:
                if getattr(exc, "full_key", None):
                    raise
                # Merge errors (a scalar over a section) carry no key: name the override's.
                key, _, value = item.partition("=")
                raise ConfigError(
                    key, f"expected {field_type(key) or 'a known key'}, got {value!r}"
                ) from None
        OmegaConf.resolve(cfg)
        # Surface missing mandatory values here, with their key path.
        for missing in sorted(OmegaConf.missing_keys(cfg)):
            raise ConfigError(missing, "a value is required (set it in the YAML or as an override)")
    except ConfigError:
        raise
    except oc_errors.OmegaConfBaseException as exc:
        raise _translate(exc, schema) from None
    return cfg


def compose(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The merged, resolved DictConfig (schema-typed), without running ``validate()``."""
    base = None
    if path is not None:
        try:
            base = _read_yaml(resolved(path), ())
        except oc_errors.OmegaConfBaseException as exc:
            raise _translate(exc, OmegaConf.structured(CineSceneConfig)) from None
    cfg = _compose(base, overrides)
    if path is not None:
        cfg.run.config_path = str(Path(path))
    return cfg


def _typed(cfg: DictConfig) -> CineSceneConfig:
    try:
        obj = OmegaConf.to_object(cfg)
    except oc_errors.OmegaConfBaseException as exc:
        raise _translate(exc, OmegaConf.structured(CineSceneConfig)) from None
    assert isinstance(obj, CineSceneConfig)
    validate_tree(obj)
    return obj


def load_config(
    path: str | os.PathLike | None, overrides: Sequence[str] = ()
) -> tuple[CineSceneConfig, DictConfig]:
    """Compose and validate. Returns the typed config and its DictConfig (for saving/printing)."""
    cfg = compose(path, overrides)
    return _typed(cfg), cfg


def to_yaml(cfg: DictConfig | CineSceneConfig) -> str:
    return OmegaConf.to_yaml(cfg if isinstance(cfg, (DictConfig, ListConfig)) else OmegaConf.structured(cfg))


def from_container(data: dict, overrides: Sequence[str] = ()) -> CineSceneConfig:
    """A typed, validated config from plain data (a config a checkpoint or export saved), then ``overrides``.

    Nothing is included (a ``defaults`` key is an unknown key here). The data is
    taken as OmegaConf would take a YAML file, so a caller that received it
    refuses ``${...}`` interpolations first (:func:`cinescene.ckpt.checkpoint_config`).
    """
    check_sections(data)
    try:
        base = OmegaConf.create(data)
    except oc_errors.OmegaConfBaseException as exc:
        raise ConfigError("", (getattr(exc, "msg", None) or str(exc)).splitlines()[0]) from None
    return _typed(_compose(base, overrides))
