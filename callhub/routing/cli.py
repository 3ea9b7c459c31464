"""`callhub rota load|check|show`: load a rota file, check one, show who is on duty.

`load` checks the file and, only when it is right, makes it the active rota
(`rota.json` in the routing state directory); a running daemon picks it up
within a second. `show` prints who is on duty on a line at a moment and in
which order the next call would be offered (busy devices are not known
offline, so nobody is skipped as busy).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from callhub.argtypes import YEARS, count, in_years
from callhub.config import load_settings
from callhub.routing.chooser import Router
from callhub.routing.duty import line_report
from callhub.routing.model import Rota
from callhub.routing.onduty import local_time, rota_zone
from callhub.routing.rota_file import RotaError, load_rota
from callhub.routing.state import POSITION_FILE, RotaStore, RotationState, state_dir

STATE = ("the routing state directory ($CALLHUB_ROUTING_STATE_DIR, else <spool_dir>/routing "
         "of the settings)")


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "rota", help="load, check and show the routing rota",
        description="Routing by rota: agents, shifts and the rotation order per line "
                    "(the file's format: docs/rota.md). `check` reads only a rota file; "
                    "`load` makes one the active rota; `show` reads the active rota.")
    actions = parser.add_subparsers(dest="rota_command", metavar="ACTION", required=True)
    load = actions.add_parser(
        "load", help="check a rota file and make it the active rota (rota.json)",
        description=f"Check the rota file and, only when it is right, write it as the "
                    f"active rota: rota.json in {STATE}. A running daemon routes by it "
                    f"within a second. Prints what it loaded; exit 2 when the file is "
                    f"wrong (nothing changed), 1 when it cannot be saved.")
    load.add_argument("file", help="rota TOML file")
    load.set_defaults(func=load_command)
    check = actions.add_parser(
        "check", help="check a rota file without loading it (reads only the file)",
        description="Check the rota file as `load` would, reading nothing else and "
                    "changing nothing: prints its agents, lines and shifts, or the first "
                    "error (exit 2).")
    check.add_argument("file", help="rota TOML file")
    check.set_defaults(func=check_command)
    show = actions.add_parser(
        "show", help="who is on duty on a line, in rotation order (reads the active rota)",
        description=f"Print who is on duty on each line (or --line) at a moment, in the "
                    f"order the next call would be offered. Reads the active rota "
                    f"(rota.json in {STATE}; without one, the settings' rota_file) and "
                    f"the rotation position beside it ({POSITION_FILE}). Offline, busy "
                    f"devices are not known: nobody is skipped as busy.")
    show.add_argument("--line", help="line name or DID (default: every line)")
    show.add_argument("--at", metavar="TIME",
                      help="ISO date-time, e.g. 2026-12-24T09:30 (local to the rota's "
                           "timezone unless an offset is given; default: now)")
    show.add_argument("--format", choices=("table", "json"), default="table",
                      help="a readable table (default) or JSON: a list, one object per "
                           "line of the rota")
    show.set_defaults(func=show_command)


def _summary(path: str) -> tuple[int, str]:
    try:
        rota = load_rota(path)
    except RotaError as exc:
        print(f"callhub: rota error: {exc}", file=sys.stderr)
        return 2, ""
    return 0, _describe(rota)


def _describe(rota: Rota) -> str:
    shifts = sum(len(line.shifts) for line in rota.lines.values())
    return (f"{count(len(rota.agents), 'agent')}, {count(len(rota.lines), 'line')} "
            f"({', '.join(rota.lines) or 'none'}), {count(shifts, 'shift')}")


def check_command(args: argparse.Namespace) -> int:
    code, text = _summary(args.file)
    if code == 0:
        print(f"{args.file}: ok: {text}")
    return code


def load_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        rota = load_rota(args.file)
        store = RotaStore(state_dir(settings))
        store.replace(rota)
    except RotaError as exc:
        print(f"callhub: rota error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the state directory: not writable, disk full
        print(f"callhub: cannot save the rota: {exc}", file=sys.stderr)
        return 1
    print(f"loaded {args.file} into {store.path}: {_describe(rota)}")
    return 0


def parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        raise SystemExit(f"callhub: --at: expected an ISO date-time such as "
                         f"2026-12-24T09:30, got {text!r}") from None
    if not in_years(at.year):
        raise SystemExit(f"callhub: --at: {YEARS}, got {text!r}")
    return at


def show_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    directory = state_dir(settings)
    try:
        store = RotaStore(directory, seed_file=None)
        if not store.rota.lines and settings.rota_file:
            store = RotaStore(None, seed_file=settings.rota_file)
    except RotaError as exc:
        print(f"callhub: rota error: {exc}", file=sys.stderr)
        return 2
    router = Router(store, RotationState(directory / POSITION_FILE),
                    default_timezone=settings.timezone)
    rota = router.rota
    if not rota.lines:
        print("callhub: no rota loaded (use `callhub rota load FILE` or set rota_file)",
              file=sys.stderr)
        return 1
    tz = rota_zone(rota, settings.timezone)
    at = local_time(parse_at(args.at) or datetime.now(tz), tz)
    if args.line:
        line = rota.line_for(args.line)
        if line is None:
            print(f"callhub: no line or DID {args.line!r} in the rota (lines: "
                  f"{', '.join(rota.lines)})", file=sys.stderr)
            return 1
        lines = [line]
    else:
        lines = list(rota.lines.values())
    reports = [line_report(router, line, at) for line in lines]
    if args.format == "json":
        print(json.dumps(reports, indent=2, ensure_ascii=False))
    else:
        for report in reports:
            print(render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    out = [f"line {report['line']} (DIDs: {', '.join(report['dids']) or '-'}) at "
           f"{report['at']} {report['timezone']}",
           f"  ring timeout {report['ring_timeout']} s per agent, fallback "
           f"{report['fallback'] or '(none: the dialplan default)'}"]
    if report["previous_agent"]:
        out.append(f"  previous call offered to {report['previous_agent']}")
    if not report["on_duty"]:
        out.append("  nobody on duty: calls go to the fallback")
    else:
        out.append("  on duty, in the order the next call is offered:")
        for a in report["on_duty"]:
            mark = f"{a['order']:>3}." if a["order"] else "   -"
            own = a["ring_timeout"] != report["ring_timeout"] and a["order"]
            status = f"{a['status']}, rings {a['ring_timeout']} s" if own else a["status"]
            mobile = f"  mobile {a['mobile']}" if a.get("mobile") else ""
            out.append(f"  {mark} {a['name']:<20} {a['interface']:<20} {status}{mobile}")
    if report["next_change"]:
        out.append(f"  next change in who is on duty: {report['next_change']}")
    return "\n".join(out)
