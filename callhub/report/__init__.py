"""`callhub report --period day|week|month --date D`: a period's desk figures per line and agent.

The figures are computed by `callhub.store.stats.compute` with the same
query `GET /api/v1/stats` builds (the period in the configured time zone,
N = 3 rings, T = 20 s, short abandons as configured), so the report and the
API never disagree. Formats: `text` (a readable summary), `csv` (one row per
scope: the period, each line, each agent), `json` (the /stats blocks) and
`html` (a page for a mail client, `callhub.report.html`). The daemon mails it
on a schedule (`callhub.report.mailer`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from callhub.argtypes import YEARS, add_database_url, in_years, whole
from callhub.config import Settings, load_settings
from callhub.config.report import LANGS
from callhub.report.figures import (
    FIGURES,
    FORMATS,
    build_report,
    day_query,
    period_query,
    render,
    to_csv,
    to_json,
    to_text,
)
from callhub.report.periods import KINDS
from callhub.store.db import Database
from callhub.store.oneshot import run_db
from callhub.store.queries import pbx_has_calls, stored_pbxs

__all__ = ["FIGURES", "FORMATS", "build_report", "day_query", "parse_day", "period_query",
           "render", "to_csv", "to_json", "to_text"]


def parse_day(text: str, tz: tzinfo, today: date | None = None) -> date:
    """YYYY-MM-DD, `today` or `yesterday` (in the configured time zone)."""
    today = today or datetime.now(tz).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date: expected YYYY-MM-DD, today or yesterday, got {text!r}") \
            from None
    if not in_years(day.year):
        raise ValueError(f"--date: {YEARS}, got {text!r}")
    return day


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "report", help="a day's, week's or month's figures per line and agent",
        description="Print a period's desk figures (the same numbers as GET /api/v1/stats) "
                    "per line and per agent.")
    parser.add_argument("--period", choices=KINDS, default="day",
                        help="the day, the week (Monday to Sunday) or the month holding "
                             "--date (default day)")
    parser.add_argument("--date", default="today", metavar="D",
                        help="YYYY-MM-DD, today or yesterday (configured time zone; "
                             "default today)")
    parser.add_argument("--format", choices=FORMATS, default="text", help="default text")
    parser.add_argument("--lang", choices=LANGS,
                        help="the HTML page's language (default [report] lang, else zh)")
    parser.add_argument("--rings", type=whole(1, 100), default=3, metavar="N",
                        help="N of within-N-rings, 1 to 100 (default 3)")
    parser.add_argument("--pbx", metavar="NAME",
                        help="only this PBX (a [[pbx]] of the config or one with stored "
                             "calls; another is refused, exit 2)")
    add_database_url(parser)
    parser.set_defaults(func=report_command)


class UnknownPbx(Exception):
    """`--pbx` names a PBX neither the config nor any stored call knows (a typo)."""

    def __init__(self, name: str, configured: list[str], stored: list[str]) -> None:
        def names(found: list[str]) -> str:
            return ", ".join(found) if found else "none"
        super().__init__(f"--pbx: no PBX named {name!r} is known (configured: "
                         f"{names(configured)}; with stored calls: {names(stored)})")


async def check_pbx(db: Database, settings: Settings, name: str) -> None:
    """Raise UnknownPbx unless `name` is a configured PBX or one with stored calls: a
    report of a misspelt PBX would be all zeros, indistinguishable from a quiet day."""
    configured = [p.name for p in settings.pbxs]
    if name in configured:
        return
    async with db.connection() as conn:
        if await pbx_has_calls(conn, name):
            return
        raise UnknownPbx(name, configured, await stored_pbxs(conn))


def report_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        day = parse_day(args.date, settings.tz)
    except ValueError as exc:
        print(f"callhub report: {exc}", file=sys.stderr)
        return 2
    url: str = args.database_url or settings.database_url

    async def job() -> dict[str, Any]:
        db = Database.connect(url)
        try:
            if args.pbx is not None:
                await check_pbx(db, settings, args.pbx)
            return await build_report(db, settings, day, rings=args.rings, pbx=args.pbx,
                                      period=args.period)
        finally:
            await db.close()

    try:
        ok, report = run_db(url, job)
    except UnknownPbx as exc:
        print(f"callhub report: {exc}", file=sys.stderr)
        return 2
    if not ok or report is None:
        return 1
    sys.stdout.write(render(report, args.format, args.lang or settings.report.lang))
    return 0
