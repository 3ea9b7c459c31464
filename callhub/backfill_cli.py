"""`callhub backfill`: calls rebuilt from Asterisk's CEL table for a window of time.

For a stretch when no callhub was listening, the PBX's cel_pgsql table still
holds every channel event. This command reads the rows of every call with a
row in [--from, --to) (whole calls, also those that began before or ended
after the window), rebuilds them with the CEL interpreter and prints one JSON
object per call on stdout, flagged `"source": "cel"` and `"rings_estimated":
true`; a call whose LINKEDID_END is not in the table yet comes flagged
`incomplete`. That is all it does by default (or with `--dry-run`).

With `--store` the finished calls are written to callhub's database instead,
through the writer's own save path (store.save): a call already stored (from
AMI or an earlier backfill) is left alone, so running it twice, or over a
window the daemon's gap recovery already covered, changes nothing. Calls
still in progress (incomplete) are not stored: they are the AMI session's. That
database is checked before any CEL row is read (there, reachable, at this callhub's
schema): a CEL table can be large, and reading it was for nothing when the calls could
not be stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from callhub.ami.cel import interpret
from callhub.argtypes import YEARS, count, database_url, in_years, not_empty
from callhub.config import ConfigError, PbxConfig, Settings, load_settings
from callhub.records import CallRecord, bounded
from callhub.store import migrate
from callhub.store.cel_source import DEFAULT_TABLE, read_cel
from callhub.store.db import Database
from callhub.store.failures import explain
from callhub.store.oneshot import does_not_exist, missing_sqlite_file, run_db
from callhub.store.save import Saved, save_calls


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "backfill", help="rebuild the calls of a time window from Asterisk's CEL table",
        description="Read the CEL rows (cel_pgsql's table) of every call with a row in "
                    "[--from, --to), rebuild the calls and print them as JSON lines, or "
                    "store them with --store. Times are ISO 8601; without a zone they are UTC.")
    parser.add_argument("--pbx", metavar="NAME", type=not_empty,
                        help="which [[pbx]] of the config the calls belong to "
                             "(default: the only one)")
    parser.add_argument("--from", dest="start", metavar="TIME", type=parse_time, required=True,
                        help="start of the window, e.g. 2026-11-29T03:00:00Z")
    parser.add_argument("--to", dest="end", metavar="TIME", type=parse_time, required=True,
                        help="end of the window (exclusive)")
    parser.add_argument("--cel-database-url", metavar="URL", type=database_url,
                        help="SQLAlchemy URL of the database cel_pgsql writes to, e.g. "
                             "postgresql+asyncpg://user:pass@host/asterisk "
                             "(default: the PBX's cel_database_url)")
    parser.add_argument("--cel-table", metavar="NAME", type=not_empty,
                        help=f"the CEL table, schema-qualified if needed "
                             f"(default: the PBX's cel_table, else {DEFAULT_TABLE!r})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print the records without storing them (the default)")
    mode.add_argument("--store", action="store_true",
                      help="store the finished calls in callhub's database (database_url) "
                           "where no record of the call is stored yet; print nothing")
    parser.set_defaults(func=backfill_command)


def parse_time(value: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    if not in_years(moment.year):
        raise argparse.ArgumentTypeError(f"{YEARS}, got {value!r}")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _pbx(args: argparse.Namespace, settings: Settings) -> PbxConfig:
    if args.pbx:
        if not settings.pbxs:
            return PbxConfig(name=args.pbx)  # no config: the default contexts, no agents
        return settings.pbx(args.pbx)
    if len(settings.pbxs) != 1:
        raise ConfigError("pbx: give --pbx NAME (the config defines "
                          f"{len(settings.pbxs)} [[pbx]] tables)")
    return settings.pbxs[0]


async def backfill(url: str, table: str, pbx: PbxConfig, start: datetime,
                   end: datetime) -> list[CallRecord]:
    """The calls of [start, end) rebuilt from the CEL table at `url`."""
    rows = await read_cel(url, start=start, end=end, table=table)
    return interpret(rows, pbx)


async def check_target(url: str) -> None:
    """Raise unless the database at `url` can take the calls (SchemaError: no tables, an
    old or newer schema; SQLAlchemy's error: unreachable, a refused login)."""
    db = Database.connect(url)
    try:
        await migrate.check_current(db)
    finally:
        await db.close()


async def store(settings: Settings, records: list[CallRecord]) -> Saved:
    """Store the records where their calls are not stored yet (one transaction)."""
    db = Database.connect(settings.database_url)
    try:
        async with db.begin() as conn:
            return await save_calls(conn, [bounded(r) for r in records], settings)
    finally:
        await db.close()


def backfill_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    settings = load_settings(args.config)
    pbx = _pbx(args, settings)
    url = args.cel_database_url or pbx.cel_database_url
    table = args.cel_table or pbx.cel_table
    if not url:
        print(f"callhub backfill: no CEL database for pbx {pbx.name!r}: "
              "give --cel-database-url", file=sys.stderr)
        return 2
    if args.end <= args.start:
        print("callhub backfill: --to must be after --from", file=sys.stderr)
        return 2
    if (missing := missing_sqlite_file(url)) is not None:  # not created by reading it
        print(f"callhub backfill: cannot read the CEL table {table!r}: "
              f"{does_not_exist(url, missing, hint='')}", file=sys.stderr)
        return 1
    if args.store:  # before CEL is read: a large table, read for nothing if nothing can be stored
        done, _ = run_db(settings.database_url, lambda: check_target(settings.database_url))
        if not done:
            return 1
    try:
        records = asyncio.run(backfill(url, table, pbx, args.start, args.end))
    except NoSuchTableError:
        print(f"callhub backfill: no table {table!r} in the CEL database", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError, ValueError) as exc:
        # One line naming the database (password masked), as the other commands' errors.
        print(f"callhub backfill: cannot read the CEL table {table!r}: {explain(url, exc)}",
              file=sys.stderr)
        return 1
    if args.store:
        finished = [r for r in records if not r.incomplete]
        done, saved = run_db(settings.database_url, lambda: store(settings, finished))
        if not done or saved is None:
            return 1
        print(f"callhub backfill: {count(len(records), 'call')} rebuilt from CEL, "
              f"{len(finished) - saved.skipped} stored, {saved.skipped} already stored, "
              f"{len(records) - len(finished)} in progress (not stored)", file=sys.stderr)
        return 0
    for record in records:
        print(json.dumps(record.to_dict(), ensure_ascii=False), file=out)
    print(f"callhub backfill: {count(len(records), 'call')} rebuilt from CEL, none stored",
          file=sys.stderr)
    return 0
