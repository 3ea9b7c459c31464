"""The `callhub` command: one sub-command per job, each defined beside the code it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from callhub import __version__, backfill_cli, config_cli, report, run_cli
from callhub.ami import replay
from callhub.config import ConfigError
from callhub.routing import cli as rota_cli
from callhub.sim import cli as simulate_cli
from callhub.store import cli as db_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callhub",
        description="Call records, ring counts, rota routing and a callback worklist "
                    "beside an Asterisk PBX.",
    )
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"callhub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    config_cli.add_parser(sub)
    replay.add_parser(sub)
    simulate_cli.add_parser(sub)
    rota_cli.add_parser(sub)
    db_cli.add_parser(sub)
    run_cli.add_parser(sub)
    report.add_parser(sub)
    backfill_cli.add_parser(sub)
    _accept_config_anywhere(parser)
    return parser


CONFIG_HELP = "TOML settings file (default: $CALLHUB_CONFIG, else built-in defaults)"


def _accept_config_anywhere(parser: argparse.ArgumentParser) -> None:
    """`callhub run --config F` works as well as `callhub --config F run`.

    Every sub-command gets `--config` too; its default is SUPPRESS so that an
    option given before the command is not overwritten by an absent one after it.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                if "--config" not in subparser._option_string_actions:
                    subparser.add_argument("--config", metavar="FILE", help=CONFIG_HELP,
                                           default=argparse.SUPPRESS)
                _accept_config_anywhere(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"callhub: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
