"""Arguments every config-driven subcommand shares: CONFIG, overrides, --print-config."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable

from cinescene.errors import NotLandedError


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("config", nargs=None if required else "?", metavar="CONFIG",
                        help="YAML config (see configs/); sections compose via `defaults:`")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="OmegaConf dotlist overrides, e.g. train.lr=1e-4 run.dir=runs/a")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved, validated config and exit")


def with_config(handler: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace], int]:
    """A subcommand handler ``handler(args, cfg)`` that gets the validated, typed config.

    With --print-config the resolved config is printed, secrets masked, and the handler is not called (exit 0).
    """

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from omegaconf import OmegaConf

        from cinescene.config import load_config, to_yaml
        from cinescene.secrets import scrub

        cfg, raw = load_config(args.config, args.overrides)
        if getattr(args, "print_config", False):
            sys.stdout.write(to_yaml(OmegaConf.create(scrub(OmegaConf.to_container(raw)))))
            return 0
        return handler(args, cfg)

    return run


def not_landed(what: str, needs: str) -> Callable[[argparse.Namespace], int]:
    """A handler for a subcommand that is not built yet: says so and fails."""

    def handler(args: argparse.Namespace) -> int:
        raise NotLandedError(f"{what} is not available yet: it arrives with {needs}. "
                             "Nothing was run.")

    return handler


def add_pending_command(sub: argparse._SubParsersAction, name: str, *, help: str, description: str,
                        needs: str) -> argparse.ArgumentParser:
    """A config-driven subcommand that is not built yet: it validates its config, then says so."""
    parser = sub.add_parser(name, help=help, description=description)
    add_config_args(parser)

    @with_config
    def run(args: argparse.Namespace, cfg) -> int:
        return not_landed(f"`cinescene {name}`", needs)(args)

    parser.set_defaults(func=run)
    return parser
