"""`callhub config check`: validate a settings file and show the effective values, masked."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from callhub.argtypes import not_empty
from callhub.config import NO_TOKENS_WARNING, Settings, load_settings
from callhub.config.sms import ANY_LINE as SMS_ANY_LINE


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "config", help="check a settings file",
        description="Validate settings and print the effective values (secrets masked).")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="validate and print the effective settings",
        description="Read the settings file (FILE, else --config, else $CALLHUB_CONFIG; none: "
                    "the built-in defaults), apply the CALLHUB_* environment variables over "
                    "it as callhub run does, and print the effective settings as JSON, every "
                    "secret masked. The first problem is one line naming its key, exit 2; a "
                    "warning (no API tokens, a PBX without its AMI username or secret, "
                    "which may come from the service's environment) goes to stderr, exit 0.")
    check.add_argument("file", nargs="?", type=not_empty,
                       help="TOML file (default: --config or $CALLHUB_CONFIG)")
    check.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.file or args.config)
    print(json.dumps(settings.masked(), indent=2, ensure_ascii=False))
    if not settings.api_tokens:
        print(f"callhub: {NO_TOKENS_WARNING}", file=sys.stderr)
    for pbx in settings.pbxs:
        missing = pbx.missing_login()
        if missing is not None:
            print(f"callhub: {missing}: callhub run will not start without it", file=sys.stderr)
    for warning in unmapped_sms_lines(settings):
        print(f"callhub: {warning}", file=sys.stderr)
    return 0


def unmapped_sms_lines(settings: Settings) -> list[str]:
    """A warning for each SMS rule whose line no `[pbx.lines]` maps DIDs to: it matches
    the calls of an unmapped DID of that number (a call's line then), or, misspelt,
    none, its callers getting the `*` rule's text or no SMS."""
    if settings.sms is None:
        return []
    known = {line for pbx in settings.pbxs for line in pbx.lines.values()}
    return [f"sms.rules[{i}].line {rule.line!r} is no line [pbx.lines] maps DIDs to "
            f"({', '.join(sorted(known)) or 'none'}): it matches only the calls of an "
            f"unmapped DID {rule.line!r}"
            for i, rule in enumerate(settings.sms.rules)
            if rule.line != SMS_ANY_LINE and rule.line not in known]
