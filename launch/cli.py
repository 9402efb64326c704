"""`cinescene` entry point: parse, dispatch, and map errors to exit statuses.

Exit statuses: 0 ok, 1 runtime error a user can fix (an OSError is one: the file and the
system's reason; or an internal error, one line naming the file with its traceback), 2 bad
config or usage, 124 saved after a preemption signal. Parsing and config validation import no torch,
so a bad config is reported in well under a second.

The console shows our log lines, progress bars and one-line errors
(:func:`cinescene.log.console`); library output goes to the run's log files
(``--verbose``, at any level of the command line, keeps it on the console).
`cinescene train` records preemption signals from right after parsing, before
the config or anything slow is imported, and a rank started by our local
spawner ties its life to the launcher's first thing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from cinescene import __version__
from cinescene.distributed import startup_signals
from cinescene.distributed.env import strip_local_rank_arg
from cinescene.distributed.spawn import die_with_launcher
from cinescene.errors import CineSceneError
from cinescene.log import VERBOSE_ENV, console, output_file

from .commands import COMMANDS

VERBOSE_HELP = "show library output (warnings, build messages) on the console instead of only in log files"


def _add_verbose(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--verbose`` on a parser and every sub-command parser below it, so it may go anywhere."""
    parser.add_argument(
        "--verbose", action="store_true", help=VERBOSE_HELP, **({} if top else {"default": argparse.SUPPRESS})
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child, top=False)


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line like every other error (argparse would print the usage block first);
    its sub-command parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cinescene",
        description="CineScene: train, launch, evaluate and export camera-controlled video DiTs.",
    )
    parser.add_argument("--version", action="version", version=f"cinescene {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").add_parser(sub)
    _add_verbose(parser, top=True)
    return parser


def _quiet_python_warnings() -> None:
    """Python warnings of commands without a run directory: shown with --verbose only (a run's
    processes send them to their log files instead, see cinescene.log.send_output_to)."""
    logging.captureWarnings(True)
    captured = logging.getLogger("py.warnings")
    captured.propagate = False
    captured.addHandler(logging.NullHandler())


def _internal_error(prog: str, exc: BaseException) -> int:
    """An unexpected exception: the traceback in the process's log file (or, for a command without one,
    in a file of its own under the temporary directory), one line on the console."""
    where = output_file()
    try:
        if where is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix=f"{prog.replace(' ', '-')}-error-", suffix=".log")
            with os.fdopen(fd, "w") as file:
                traceback.print_exc(file=file)
            where = name
        else:
            traceback.print_exc()  # sys.stderr: the log file
            sys.stderr.flush()
        told = f"the traceback is in {where}"
    except OSError as failed:  # the log's disk is full: the cause still reaches the console
        told = f"its traceback could not be written ({failed.strerror or failed})"
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    print(f"{prog}: error: internal error ({type(exc).__name__}: {first_line}); {told}", file=console())
    return 1


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: the file(s) it names and the system's reason."""
    reason = exc.strerror or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _command(argv: list[str]) -> str | None:
    """The subcommand's name, read before the parser is built (a peek: the parser still decides)."""
    return next((item for item in argv if not item.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = strip_local_rank_arg(sys.argv[1:] if argv is None else argv)
    if _command(argv) == "train":
        startup_signals.install()  # first: a preemption signal from now on is a request, not a kill
    die_with_launcher()
    parser = build_parser()
    # Overrides may come after options (`train C --nproc 2 a.b=c`): argparse leaves
    # those unparsed, so collect them here instead of rejecting them.
    args, extra = parser.parse_known_args(argv)
    late = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in late]
    if unknown or (late and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or late)}")
    if late:
        args.overrides = list(args.overrides) + late
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # ranks started by this process inherit it
    else:
        _quiet_python_warnings()
    from cinescene.config import ConfigError

    prog = f"cinescene {args.command}"
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"{prog}: config error: {exc}", file=console())
        return 2
    except CineSceneError as exc:
        print(f"{prog}: error: {exc}", file=console())
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=console())
        return 130
    except OSError as exc:
        if args.verbose and output_file() is None:
            raise
        # A path that exists but is the wrong kind (a directory, /dev/null), a name too long, a symlink loop,
        # a full disk, a permission: the system's reason and the file are the message.
        print(f"{prog}: error: {os_error_line(exc)}", file=console())
        return 1
    except Exception as exc:
        if args.verbose and output_file() is None:
            raise  # --verbose: the traceback on the console
        return _internal_error(prog, exc)


if __name__ == "__main__":
    sys.exit(main())
