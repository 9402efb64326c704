"""Structured configs (OmegaConf dataclasses), one per component, and their loader."""

from .base import ConfigError
from .loading import compose, from_container, load_config, to_yaml, validate_tree
from .schema import CineSceneConfig

__all__ = [
    "CineSceneConfig",
    "ConfigError",
    "compose",
    "from_container",
    "load_config",
    "to_yaml",
    "validate_tree",
]
