"""The config a checkpoint or an export was saved with, read as data: the one reader.

A step directory holds ``config.yaml``, an export ``cinescene_config.yaml``
(and its model config in ``cinescene.json``). All of them are received
files, so they are data:

- read by :func:`cinescene.config.loading.read_yaml` (safe constructors,
  no duplicate keys) and never composed with other files;
- a ``${...}`` interpolation in them is refused with one line naming the key
  (resolving one would reach into this machine: ``${oc.env:HF_TOKEN}`` copies
  a secret into whatever is written next); a key given as an override
  replaces the saved value, interpolation or not;
- runs saved before the secret scrubber spared numbers and flags hold
  ``***`` for some (``model.scene.vggt.num_register_tokens``); such a key
  must be given as an override, and the error says which;
- keys the config no longer has (:data:`RETIRED_KEYS`) are dropped or moved
  to the key that owns their value now.

Then the user's overrides (``KEY=VALUE``) apply, and the result is checked
like any config. A problem with the saved file is one line naming it (exit 1);
a bad override is a config error naming its key (exit 2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cinescene.config import CineSceneConfig, ConfigError, from_container
from cinescene.config.loading import field_type, read_yaml
from cinescene.errors import CineSceneError
from cinescene.secrets import MASK

from .layout import CONFIG_FILE
from .locate import EXPORT, RUN_CONFIG, CheckpointSource, resolve_checkpoint

#: Keys older runs saved that the config no longer has, and the key that owns their value now.
RETIRED_KEYS = {("data", "val_shards"): ("eval", "data")}
INTERPOLATION = "${"


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every value that is not a mapping; list elements as ``key[i]``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{prefix[:-1]}[{index}].")
    else:
        yield prefix[:-1], node


def _drop(raw: dict, key: str) -> None:
    """Remove ``key`` (dotted, mapping keys only) from ``raw`` when it holds a value, not a section."""
    parent: Any = raw
    *head, last = key.split(".")
    for part in head:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if isinstance(parent, dict) and last in parent and not isinstance(parent[last], dict):
        del parent[last]


def _retire_keys(raw: dict) -> None:
    """Drop :data:`RETIRED_KEYS`, moving a value to its owner when that is unset. ``data.val_shards`` was the
    held-out data before ``eval.data`` owned it."""
    for (section, key), (owner, owner_key) in RETIRED_KEYS.items():
        if isinstance(raw.get(section), dict) and key in raw[section]:
            value = raw[section].pop(key)
            if (
                value is not None
                and isinstance(raw.setdefault(owner, {}), dict)
                and not raw[owner].get(owner_key)
            ):
                raw[owner][owner_key] = value


def config_from_data(raw: dict, overrides: Sequence[str], where: Path) -> CineSceneConfig:
    """A received config tree (from ``where``) as a checked config, ``overrides`` applied (see module doc)."""
    overrides = list(overrides)
    given = {item.partition("=")[0].strip() for item in overrides}
    for key in given:  # an override replaces the saved value: whatever that was, it is never read
        _drop(raw, key)
    leaves = list(_leaves(raw))
    for key, value in leaves:
        if isinstance(value, str) and INTERPOLATION in value:
            raise CineSceneError(
                f"{where}: {key} holds an interpolation ({value[:60]!r}); configs read from checkpoints "
                "and exports are data and are never resolved (give the value as an override, "
                f"{key.split('[')[0]}=VALUE)"
            )
    masked = [k for k, v in leaves if v == MASK and "str" not in str(field_type(k))]
    if masked:
        raise CineSceneError(
            f"{where} has {', '.join(masked)} masked as '{MASK}' (older runs scrubbed them as if "
            f"secret): give the run's values as overrides, e.g. {masked[0]}=VALUE"
        )
    _retire_keys(raw)
    try:
        return from_container(raw, overrides)
    except ConfigError as exc:
        if any(exc.key == key or exc.key.startswith(f"{key}.") for key in given):
            raise  # the user's override: a config error (exit 2)
        raise CineSceneError(f"{where} is not a config this version reads ({exc})") from None


def checkpoint_config(
    source: CheckpointSource | Path | str, overrides: Sequence[str] = ()
) -> CineSceneConfig:
    """The run's config as the checkpoint (or export) saved it, with ``overrides`` (KEY=VALUE) applied."""
    if not isinstance(source, CheckpointSource):
        source = resolve_checkpoint(source)
    path = source.path / (RUN_CONFIG if source.kind == EXPORT else CONFIG_FILE)
    if not path.is_file():
        raise CineSceneError(
            f"{source.path} has no {path.name}: the checkpoint does not say which model it holds"
        )
    try:
        raw = read_yaml(path)
    except ConfigError as exc:  # its messages name the file
        raise CineSceneError(str(exc)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CineSceneError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    return config_from_data(raw, overrides, path)
