"""`cinescene` entry point: parse, dispatch, and map errors to exit statuses.

Exit statuses: 0 ok, 1 runtime error a user can fix, 2 bad config or usage,
3 a subcommand not built yet. Parsing and config validation import no torch,
so a bad config is reported in well under a second.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from cinescene import __version__
from cinescene.config import ConfigError
from cinescene.distributed.env import strip_local_rank_arg
from cinescene.errors import CineSceneError

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cinescene",
        description="CineScene: train, launch, evaluate and export camera-controlled video DiTs.",
    )
    parser.add_argument("--version", action="version", version=f"cinescene {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = strip_local_rank_arg(sys.argv[1:] if argv is None else argv)
    # Overrides may come after options (`train C --nproc 2 a.b=c`): argparse leaves
    # those unparsed, so collect them here instead of rejecting them.
    args, extra = parser.parse_known_args(argv)
    late = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in late]
    if unknown or (late and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or late)}")
    if late:
        args.overrides = list(args.overrides) + late
    prog = f"cinescene {args.command}"
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=sys.stderr)
        return 2
    except CineSceneError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
