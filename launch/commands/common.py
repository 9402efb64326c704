"""Arguments every config-driven subcommand shares (CONFIG, overrides, --print-config), and the typed
request a library command takes instead of the parsed flags."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

RequestT = TypeVar("RequestT")

# CKPT of `cinescene sample` and `cinescene eval`: what sampling.checkpoint.resolve_checkpoint accepts.
CHECKPOINT_HELP = (
    "a run directory (its latest checkpoint), its checkpoints/ directory, a step directory, "
    "or a directory written by `cinescene ckpt export`"
)
EMA_HELP = "use the EMA weights (of an export: only one exported with --ema)"


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "config",
        nargs=None if required else "?",
        metavar="CONFIG",
        help="YAML config (see configs/); sections compose via `defaults:`",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="OmegaConf dotlist overrides, e.g. train.lr=1e-4 run.dir=runs/a",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved, validated config and exit"
    )


def with_config(handler: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand handler ``handler(args, cfg)`` that gets the validated, typed config.

    With --print-config the resolved config is printed, secrets masked, and the handler is not called
    (exit 0).
    """

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from cinescene.config import load_config

        cfg, raw = load_config(args.config, args.overrides)
        if getattr(args, "print_config", False):
            print_config(raw)
            return 0
        return handler(args, cfg)

    return run


def request_from(args: argparse.Namespace, request_type: type[RequestT]) -> RequestT:
    """The library's typed request (a dataclass whose fields are named like the flags' destinations)."""
    return request_type(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(request_type)}
    )


def print_config(raw) -> None:
    """``--print-config``: the resolved config as YAML, secrets masked (cinescene.secrets)."""
    from omegaconf import OmegaConf

    from cinescene.config import to_yaml
    from cinescene.secrets import scrub

    sys.stdout.write(to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(raw)))))
