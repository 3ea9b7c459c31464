"""`callhub db upgrade|current|quarantine|restore`: the schema, and the calls the database
refused."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from callhub.argtypes import add_database_url, count, whole
from callhub.config import load_settings, mask_url
from callhub.store import migrate, quarantine, restore
from callhub.store.db import Database
from callhub.store.oneshot import missing_sqlite_file, run_db

MAX_LIMIT = 1_000_000
MAX_ID = 2**63 - 1  # an id past the column's bigint was an OverflowError traceback on SQLite


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "db", help="database schema",
        description="Manage the database schema (Alembic migrations shipped with callhub).")
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="apply the migrations up to the newest (or REV)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    add_database_url(up)
    up.set_defaults(func=upgrade_command)
    cur = actions.add_parser("current", help="print the database's revision")
    add_database_url(cur)
    cur.set_defaults(func=current_command)
    qua = actions.add_parser("quarantine",
                             help="list the calls the database refused and the spool lines "
                                  "that could not be read back (newest first)")
    add_database_url(qua)
    qua.add_argument("--limit", type=whole(1, MAX_LIMIT), default=100,
                     help=f"at most N calls, 1 to {MAX_LIMIT:,} (default 100)")
    qua.add_argument("--json", action="store_true",
                     help="one JSON object per call, with the whole record")
    qua.set_defaults(func=quarantine_command)
    res = actions.add_parser(
        "restore", help="store quarantined calls again, once what refused them is mended",
        description="Store quarantined calls (ids from `callhub db quarantine`) as the "
                    "writer would have, worklist and figures included, and delete their "
                    "rows; a call refused again keeps its row and is listed with the "
                    "reason. Exit 1 when any is kept.")
    which = res.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=whole(1, MAX_ID), default=[], metavar="ID",
                       help="quarantine ids")
    which.add_argument("--all", action="store_true", help="every quarantined call")
    add_database_url(res)
    res.set_defaults(func=restore_command)


def _url(args: argparse.Namespace) -> str:
    url: str = args.database_url or load_settings(args.config).database_url
    return url


def upgrade_command(args: argparse.Namespace) -> int:
    url = _url(args)
    new_file = missing_sqlite_file(url) is not None

    async def run() -> str | None:
        if new_file:  # connecting creates the file: a wrong target must not leave it behind
            migrate.check_target(args.revision)
        db = Database.connect(url)
        try:
            await migrate.upgrade(db, args.revision)
            return await migrate.current_revision(db)
        finally:
            await db.close()

    ok, revision = run_db(url, run, may_create=True)
    if not ok:
        return 1
    print(f"database {mask_url(url)} is at revision {revision}")
    return 0


def quarantine_command(args: argparse.Namespace) -> int:
    url = _url(args)

    async def run() -> list[dict[str, Any]]:
        db = Database.connect(url)
        try:
            async with db.connection() as conn:
                return await quarantine.listing(conn, args.limit)
        finally:
            await db.close()

    ok, rows = run_db(url, run)
    if not ok or rows is None:
        return 1
    for row in rows:
        when = row["quarantined_at"].isoformat(timespec="seconds")
        if args.json:
            print(json.dumps({"id": row["id"], "quarantined_at": when, "error": row["error"],
                              "record": json.loads(row["record"])}, ensure_ascii=False))
        else:
            print(f"{row['id']}\t{when}\t{row['pbx']}\t{row['linkedid']}\t{row['error']}")
    if not args.json:
        print(f"{count(len(rows), 'quarantined call')} shown", file=sys.stderr)
    return 0


def restore_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    url: str = args.database_url or settings.database_url

    async def run() -> restore.Restored:
        db = Database.connect(url)
        try:
            # As `callhub run` would not write calls into a schema other than its own (an
            # older one lacks columns; a newer callhub's may mean other things by them).
            await migrate.check_current(db)
            return await restore.restore(db, settings, None if args.all else args.ids)
        finally:
            await db.close()

    ok, done = run_db(url, run)
    if not ok or done is None:
        return 1
    for qid, reason in done.kept:
        print(f"{qid}\tkept: {reason}")
    for qid in done.missing:
        print(f"{qid}\tnot in the quarantine")
    print(f"{count(len(done.stored), 'call')} stored again, {len(done.kept)} kept",
          file=sys.stderr)
    return 1 if done.kept or done.missing else 0


def current_command(args: argparse.Namespace) -> int:
    url = _url(args)

    async def run() -> str | None:
        db = Database.connect(url)
        try:
            return await migrate.current_revision(db)
        finally:
            await db.close()

    ok, revision = run_db(url, run)
    if not ok:
        return 1
    head = migrate.head_revision()
    if revision is not None and not migrate.known(revision):
        state = f"newer than this callhub (its newest is {head}): a newer callhub upgraded it"
    else:
        state = "up to date" if revision == head else f"behind (head is {head})"
    print(f"database {mask_url(url)} is at revision {revision}: {state}")
    return 0 if revision == head else 1
