"""Shared pieces of the structured configs: the error type and field checks.

Every component owns a dataclass in this package. A dataclass may define
``validate(self)``; it raises :class:`ConfigError` naming the field relative to
itself, and :func:`cinescene.config.loading.validate_tree` prefixes the full key
path (``train.lr``) before the CLI prints it. Nothing here imports torch: the
whole config layer must run before any heavy import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A config value a user got wrong; ``key`` is the dotted path to it."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def prefixed(self, prefix: str) -> ConfigError:
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return ConfigError(key, self.message)


def require(condition: bool, key: str, expected: str, value: Any = None) -> None:
    """Raise ``ConfigError(key, 'expected <expected>, got <value>')`` unless true."""
    if not condition:
        raise ConfigError(key, f"expected {expected}, got {value!r}")


def finite(value: Any, key: str) -> None:
    """Refuse ``inf`` and ``nan``: no float setting of ours has a meaning for them.

    :func:`cinescene.config.loading.validate_tree` calls this for every float
    field (and float list element) of every section, so a new float field is
    covered without its own check.
    """
    if isinstance(value, float):
        require(math.isfinite(value), key, "a finite number", value)


def at_most(value: Any, key: str, limit: int, why: str) -> None:
    """An upper bound on a size, with the reason a larger value is refused."""
    if value is not None and value > limit:
        raise ConfigError(key, f"expected a value <= {limit} ({why}), got {value!r}")


def positive(value: Any, key: str) -> None:
    require(value is not None and value > 0, key, "a value > 0", value)


def non_negative(value: Any, key: str) -> None:
    require(value is not None and value >= 0, key, "a value >= 0", value)


def in_range(value: Any, key: str, low: float, high: float) -> None:
    require(value is not None and low <= value <= high, key, f"a value in [{low}, {high}]", value)


def one_of(value: Any, key: str, choices: Iterable[Any]) -> None:
    choices = list(choices)
    require(value in choices, key, f"one of {choices}", value)


def optional_positive(value: float | None, key: str) -> None:
    if value is not None:
        positive(value, key)
