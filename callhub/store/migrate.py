"""Apply the packaged Alembic migrations to a `Database` (async URL, sync Alembic inside)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from callhub.store.db import Database

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaError(RuntimeError):
    """A migration that cannot run (a revision unknown here), said in one line."""


class SchemaBehind(SchemaError):
    """The schema is older than this callhub's (or not there): `callhub db upgrade`, or a
    start that migrates, brings it up to date."""


def newer_schema(current: str) -> str:
    """Why this callhub cannot use a database a newer callhub upgraded."""
    return (f"the database is at revision {current}, which this callhub does not know "
            f"(its newest is {head_revision()}): a newer callhub upgraded it; run that "
            f"version or a later one")


# What PostgreSQL stores callhub's text in: UTF8, or SQL_ASCII (bytes as given). Any
# other encoding refuses characters it lacks (22P05): every call with a Chinese name
# would end in the quarantine.
ENCODINGS = ("UTF8", "SQL_ASCII")


def encoding_problem(connection: Connection) -> str | None:
    """Why this PostgreSQL database cannot hold the PBX's names, or None."""
    if connection.dialect.name != "postgresql":
        return None
    encoding = connection.execute(sa.text("SHOW server_encoding")).scalar()
    if encoding in ENCODINGS:
        return None
    return (f"the database's encoding is {encoding}: callers' and agents' names (Chinese "
            f"ones among them) cannot all be stored; create it with ENCODING 'UTF8' "
            f"(CREATE DATABASE callhub ENCODING 'UTF8' TEMPLATE template0)")


async def check_encoding(db: Database) -> None:
    """Raise SchemaError when the database cannot hold every name (PostgreSQL)."""
    async with db.connection() as conn:
        problem = await conn.run_sync(encoding_problem)
    if problem is not None:
        raise SchemaError(problem)


async def check_current(db: Database) -> None:
    """Raise SchemaError unless the database can take this callhub's calls as they are:
    its encoding holds every name and its schema is at this callhub's newest revision
    (for a command that writes calls without migrating, asked before it does the work)."""
    await check_encoding(db)
    current, head = await current_revision(db), head_revision()
    if current is None:
        raise SchemaBehind("callhub's tables are not there: `callhub db upgrade` creates them")
    if not known(current):
        raise SchemaError(newer_schema(current))
    if current != head:
        raise SchemaBehind(f"the database is at revision {current}, callhub needs {head}: "
                           f"run `callhub db upgrade`")


def known(revision: str) -> bool:
    """Whether `revision` is one of this callhub's migrations."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged scripts, no ini file needed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema up to `revision` in one transaction (PostgreSQL) or as far as it gets.

    On PostgreSQL the transaction first takes an advisory lock of its schema: several
    `callhub run` processes sharing one database (docs/scaling.md) may start at once,
    and the second then waits for the first's migration and finds nothing left to do
    instead of failing on the tables the first is creating.
    """
    async with db.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.text(
                "SELECT pg_advisory_xact_lock(hashtext('callhub.migrate:' || current_schema()))"))
        await conn.run_sync(_upgrade, revision)


def _upgrade(connection: Connection, revision: str) -> None:
    problem = encoding_problem(connection)
    if problem is not None:
        raise SchemaError(problem)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None and not known(current):
        raise SchemaError(newer_schema(current))
    check_target(revision, current)
    try:
        command.upgrade(alembic_config(connection), revision)
    except CommandError as exc:  # a target revision that does not exist
        raise SchemaError(unknown_revision(revision, str(exc))) from None


def check_target(revision: str, current: str | None = None) -> None:
    """Raise SchemaError when a database at `current` (None: an empty one) cannot be
    upgraded to `revision`.

    `callhub db upgrade` asks this before it creates a SQLite file (connecting creates
    it): a mistyped target was refused only once the file was there, and left it behind
    for nothing. The target is judged by the code Alembic's upgrade runs on it
    (`_upgrade_revs`), so it is refused in the same words as by the upgrade. Some
    malformed targets (``, `@`, `head-99`, `heads+1`) trip an assert in Alembic's parser
    instead of its "Can't locate revision": a traceback, and never a revision."""
    script = ScriptDirectory.from_config(alembic_config())
    try:
        script._upgrade_revs(revision, current or "base")
    except CommandError as exc:
        raise SchemaError(unknown_revision(revision, str(exc))) from None
    except AssertionError:
        raise SchemaError(unknown_revision(
            revision, f"Can't locate revision identified by {revision!r}")) from None


def unknown_revision(revision: str, error: str) -> str:
    """Alembic's error for a target it cannot find, with this callhub's revisions and the
    one meant where the number tells (`0001_initial`, the first script's file name, is
    the revision `0001`)."""
    script = ScriptDirectory.from_config(alembic_config())
    ids = [r.revision for r in reversed(list(script.walk_revisions()))]  # oldest first
    number = revision.split("_", 1)[0]
    meant = [r for r in ids if r.split("_", 1)[0] == number and r != revision]
    hint = f"; did you mean {meant[0]}?" if len(meant) == 1 else ""
    return f"{error} (this callhub's revisions: {', '.join(ids)}{hint})"


async def downgrade(db: Database, revision: str) -> None:
    def run(connection: Connection) -> None:
        try:
            command.downgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise SchemaError(str(exc)) from None

    async with db.begin() as conn:
        await conn.run_sync(run)


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, None for an empty one."""
    async with db.connection() as conn:
        return await conn.run_sync(
            lambda c: MigrationContext.configure(c).get_current_revision())


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
