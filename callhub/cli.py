"""The `callhub` command: one sub-command per job, each defined beside the code it runs.

Only the module of the sub-command being run is imported: the others stand in the
parser as a name and a one-line help. Importing all of them cost about a second at
every start, and made a `callhub run` process load the simulator.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from callhub import __version__
from callhub.argtypes import not_empty
from callhub.config import ConfigError

# name -> (module defining it with `add_parser(sub)`, the help `callhub --help` lists).
# tests/test_cli.py checks each help against the one its module gives.
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("callhub.config_cli", "check a settings file"),
    "replay": ("callhub.ami.replay", "replay recorded AMI traces and print the call records"),
    "simulate": ("callhub.sim.cli", "run an AMI simulator (replayed traces or synthetic calls)"),
    "rota": ("callhub.routing.cli", "load, check and show the routing rota"),
    "db": ("callhub.store.cli", "database schema"),
    "run": ("callhub.run_cli", "run the daemon (AMI ingestion, writer, API, FastAGI routing)"),
    "report": ("callhub.report", "a day's, week's or month's figures per line and agent"),
    "backfill": ("callhub.backfill_cli",
                 "rebuild the calls of a time window from Asterisk's CEL table"),
}


def build_parser(only: str | None = None, *, lazy: bool = False) -> argparse.ArgumentParser:
    """The whole parser; with `lazy`, only the sub-command `only` is defined in full."""
    parser = argparse.ArgumentParser(
        prog="callhub",
        description="Call records, ring counts, rota routing and a callback worklist "
                    "beside an Asterisk PBX.",
    )
    parser.add_argument("--config", metavar="FILE", type=not_empty, help=CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"callhub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in COMMANDS.items():
        if lazy and name != only:
            sub.add_parser(name, help=summary, add_help=False)
        else:
            importlib.import_module(module).add_parser(sub)
    _accept_config_anywhere(parser)
    return parser


def command_in(argv: Sequence[str]) -> str | None:
    """The sub-command argv names, found without importing any: the first word that is one."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


CONFIG_HELP = "TOML settings file (default: $CALLHUB_CONFIG, else built-in defaults)"


def _accept_config_anywhere(parser: argparse.ArgumentParser) -> None:
    """`callhub run --config F` works as well as `callhub --config F run`.

    Every sub-command gets `--config` too; its default is SUPPRESS so that an
    option given before the command is not overwritten by an absent one after it.
    An empty one is refused (`not_empty`): it read no file, silently, as if none was given.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                if "--config" not in subparser._option_string_actions:
                    subparser.add_argument("--config", metavar="FILE", type=not_empty,
                                           help=CONFIG_HELP, default=argparse.SUPPRESS)
                _accept_config_anywhere(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_in(words), lazy=True)
    args = parser.parse_args(words)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
    except ConfigError as exc:
        print(f"callhub: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not _stdout_broken():
            raise  # a socket's or another pipe's: a fault to show, not a reader gone
        return _reader_gone()
    return code


def _stdout_broken() -> bool:
    """Whether stdout's reader went away: what stdout still holds fails to go again."""
    try:
        sys.stdout.write("\n")  # buffered, so it goes with the flush (or fails with it)
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    return False


def _reader_gone() -> int:
    """The output's reader went away (`callhub replay ... | head`): stop quietly, as a
    filter that SIGPIPE ends does (exit 141), not with a traceback. What is still
    buffered for stdout goes nowhere, or Python's flush at exit would fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
