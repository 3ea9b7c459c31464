"""Migrations create exactly the tables in callhub/store/tables.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url
from store_fixtures import DbFactory, pg_url

from callhub.cli import main
from callhub.config import Settings
from callhub.daemon import Daemon, StartupError, running
from callhub.report import build_report
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.oneshot import run_db
from callhub.store.tables import metadata


async def test_migrations_match_the_tables(db_factory: DbFactory) -> None:
    db = await db_factory.create()
    assert await migrate.current_revision(db) is None
    await migrate.upgrade(db)
    assert await migrate.current_revision(db) == migrate.head_revision()

    def diff(conn):  # type: ignore[no-untyped-def]
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)

    async with db.connection() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


async def test_upgrade_twice_is_harmless_and_downgrade_empties(db_factory: DbFactory) -> None:
    db = await db_factory.create()
    await migrate.upgrade(db)
    await migrate.upgrade(db)
    assert await migrate.current_revision(db) == migrate.head_revision()
    await migrate.downgrade(db, "base")
    assert await migrate.current_revision(db) is None

    def tables(conn):  # type: ignore[no-untyped-def]
        import sqlalchemy as sa
        return set(sa.inspect(conn).get_table_names()) - {"alembic_version"}

    async with db.connection() as conn:
        assert await conn.run_sync(tables) == set()


async def test_processes_upgrading_one_postgresql_at_once_all_succeed(tmp_path: Path) -> None:
    """Several `callhub run` sharing a database start at once (docs/scaling.md): each
    migrates, on a connection of its own; one creates the tables, the others wait for it
    and find the schema at head."""
    factory = DbFactory("postgresql", tmp_path)
    first = await factory.create()
    others = [Database.connect(pg_url(), schema=first.schema) for _ in range(2)]
    try:
        await asyncio.gather(*(migrate.upgrade(db) for db in [first, *others]))
        for db in [first, *others]:
            assert await migrate.current_revision(db) == migrate.head_revision()
    finally:
        for db in others:
            await db.close()
        await factory.cleanup()


def test_cli_db_upgrade_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "CALLHUB_DATABASE_URL": url}
    env.pop("CALLHUB_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "callhub", "db", "upgrade"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert migrate.head_revision() in (done.stdout or "")
    check = subprocess.run([sys.executable, "-m", "callhub", "db", "current"], env=env,
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "up to date" in check.stdout


def test_cli_says_a_database_is_newer_than_this_callhub_in_one_line(tmp_path: Path) -> None:
    """`db current`, `db upgrade` and `run` on a revision this callhub does not know, and
    `db upgrade` to a revision that does not exist: exit non-zero, no traceback."""
    path = tmp_path / "cli.db"
    env = {**os.environ, "CALLHUB_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
           "CALLHUB_API_LISTEN": "127.0.0.1:0", "CALLHUB_SPOOL_DIR": str(tmp_path / "spool")}
    env.pop("CALLHUB_CONFIG", None)

    def callhub(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callhub", *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    assert callhub("db", "upgrade").returncode == 0
    missing = callhub("db", "upgrade", "0099_nosuch")
    assert missing.returncode == 1 and "0099_nosuch" in missing.stderr
    assert "Traceback" not in missing.stderr
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_future'")
    current = callhub("db", "current")
    assert current.returncode == 1 and "newer than this callhub" in current.stdout
    for args, code in ((("db", "upgrade"), 1), (("run",), 2), (("run", "--no-migrate"), 2)):
        done = callhub(*args)
        assert done.returncode == code, (args, done.stderr[-2000:])
        assert "newer callhub upgraded it" in done.stderr and "Traceback" not in done.stderr


def test_run_no_migrate_on_a_sqlite_file_not_there_says_so_and_creates_nothing(
        tmp_path: Path) -> None:
    """`run --no-migrate` created the file by connecting, refused its empty schema ("at
    revision None") and left the file behind, as `db upgrade` did with a wrong target."""
    path = tmp_path / "typo.db"
    env = {**os.environ, "CALLHUB_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
           "CALLHUB_API_LISTEN": "127.0.0.1:0", "CALLHUB_FASTAGI_LISTEN": "127.0.0.1:0",
           "CALLHUB_SPOOL_DIR": str(tmp_path / "spool")}
    env.pop("CALLHUB_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "callhub", "run", "--no-migrate"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"callhub: database sqlite+aiosqlite:///{path} does not exist: no file {path} "
        "(`callhub db upgrade` creates it, or drop --no-migrate)"]
    assert list(tmp_path.iterdir()) == []


def test_run_no_migrate_on_a_schema_behind_says_what_brings_it_up_to_date(
        tmp_path: Path) -> None:
    """`run --no-migrate` judges the schema as the commands that write calls do
    (`migrate.check_current`), adding that a start that migrates would do: a file with no
    tables said "at revision None"."""
    empty, old = tmp_path / "empty.db", tmp_path / "old.db"
    sqlite3.connect(empty).close()
    assert main(["db", "upgrade", "0005", "--database-url", f"sqlite:///{old}"]) == 0
    head = migrate.head_revision()
    for path, why in ((empty, "callhub's tables are not there: `callhub db upgrade` creates "
                              "them"),
                      (old, f"the database is at revision 0005_call_source, callhub needs "
                            f"{head}: run `callhub db upgrade`")):
        env = {**os.environ, "CALLHUB_DATABASE_URL": f"sqlite+aiosqlite:///{path}",
               "CALLHUB_API_LISTEN": "127.0.0.1:0", "CALLHUB_FASTAGI_LISTEN": "127.0.0.1:0",
               "CALLHUB_SPOOL_DIR": str(tmp_path / "spool")}
        env.pop("CALLHUB_CONFIG", None)
        done = subprocess.run([sys.executable, "-m", "callhub", "run", "--no-migrate"],
                              env=env, capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"{why} (or drop --no-migrate)" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("bad", ["nonsense", "sqlite+aiosqlite:////nonexistent-dir/x/y.db"])
def test_cli_db_upgrade_reports_a_bad_url(tmp_path: Path, bad: str) -> None:
    env = {**os.environ, "CALLHUB_DATABASE_URL": bad}
    done = subprocess.run([sys.executable, "-m", "callhub", "db", "upgrade"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr


async def test_database_close_is_idempotent(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await db.ping()
    await db.close()
    await db.close()


async def test_a_postgresql_database_that_cannot_hold_chinese_names_is_refused(
        tmp_path: Path) -> None:
    """A database created LATIN1 (a server set up under another locale) refuses '张三'
    (SQLSTATE 22P05, a data error: every call with such a name would be quarantined).
    `callhub run`, with or without migrating, and `callhub db upgrade` refuse it up front,
    naming the encoding, and create nothing in it."""
    name = f"callhub_latin1_{os.getpid()}"
    admin = Database.connect(pg_url(), isolation_level="AUTOCOMMIT")
    async with admin.engine.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        await conn.execute(sa.text(f"""CREATE DATABASE "{name}" ENCODING 'LATIN1'
                                       LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"""))
    url = make_url(pg_url()).set(database=name).render_as_string(hide_password=False)
    db = Database.connect(url)
    try:
        settings = replace(Settings(), api_listen=("127.0.0.1", 0),
                           spool_dir=str(tmp_path / "spool"))
        for migrating in (True, False):
            with pytest.raises(StartupError, match="encoding is LATIN1"):
                async with running(Daemon(settings, db=db, migrate=migrating)):
                    pass
        env = {**os.environ, "CALLHUB_DATABASE_URL": url}
        env.pop("CALLHUB_CONFIG", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callhub", "db", "upgrade", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, raw = await asyncio.wait_for(proc.communicate(), 60)
        stderr = raw.decode("utf-8", "replace")
        assert proc.returncode == 1 and "encoding is LATIN1" in stderr
        assert "Traceback" not in stderr
        assert await migrate.current_revision(db) is None
    finally:
        await db.close()
        async with admin.engine.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        await admin.close()


async def test_a_postgresql_url_without_a_driver_connects_on_asyncpg(tmp_path: Path) -> None:
    """`postgresql://...` as libpq writes it: SQLAlchemy's default driver for it, psycopg2,
    is not installed (a ModuleNotFoundError at the first connect)."""
    factory = DbFactory("postgresql", tmp_path)
    made = await factory.create()
    plain = make_url(pg_url()).set(drivername="postgresql").render_as_string(
        hide_password=False)
    assert plain.startswith("postgresql://")
    db = Database.connect(plain, schema=made.schema)
    try:
        await migrate.upgrade(db)
        assert db.engine.dialect.driver == "asyncpg"
        assert await migrate.current_revision(made) == migrate.head_revision()
    finally:
        await db.close()
        await factory.cleanup()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_command_on_a_database_without_the_tables_says_how_to_make_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    factory = DbFactory(kind, tmp_path)
    made = asyncio.run(factory.create())
    url = made.engine.url.render_as_string(hide_password=False)

    async def count() -> int:
        db = Database.connect(url, schema=made.schema)
        try:
            async with db.connection() as conn:
                return int((await conn.execute(sa.text("SELECT count(*) FROM calls"))).scalar_one())
        finally:
            await db.close()

    try:
        assert run_db(url, count) == (False, None)
    finally:
        asyncio.run(factory.cleanup())
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(
        "(callhub's tables are not there: `callhub db upgrade` creates them)"), err


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_report_on_an_older_schema_says_the_schema_is_not_this_callhubs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """A report on a database a migration behind said only "no such column:
    calls.resolution" (SQLite) or "column calls.resolution does not exist"."""
    factory = DbFactory(kind, tmp_path)
    made = asyncio.run(factory.create())
    url = made.engine.url.render_as_string(hide_password=False)

    async def older() -> None:
        await migrate.upgrade(made, "0005_call_source")  # before calls.resolution
        await made.close()

    async def report() -> dict[str, object]:
        db = Database.connect(url, schema=made.schema)
        try:
            return await build_report(db, Settings(), date(2026, 11, 29))
        finally:
            await db.close()

    try:
        asyncio.run(older())
        assert run_db(url, report) == (False, None)
    finally:
        asyncio.run(factory.cleanup())
    [said] = capsys.readouterr().err.splitlines()
    assert "calls.resolution" in said and said.endswith(
        " (the database's schema is not this callhub's: `callhub db current` says which "
        "revision it is at, `callhub db upgrade` brings an older one up)"), said


def test_a_command_on_a_sqlite_file_in_a_missing_directory_names_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'callhub.db'}"

    async def current() -> str | None:
        db = Database.connect(url)
        try:
            return await migrate.current_revision(db)
        finally:
            await db.close()

    assert run_db(url, current, may_create=True) == (False, None)  # as `db upgrade` runs
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"callhub: database {url}: OperationalError: unable to open "
                                f"database file (the directory {tmp_path / 'gone'} does not "
                                "exist)"]


def test_a_read_only_command_on_a_sqlite_file_not_there_says_so_and_creates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Connecting creates a SQLite file (as `callhub run` wants); a command that only reads
    or adds to an existing database left an empty file behind a typo in the path, and
    `db current` said "at revision None: behind"."""
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "typo.db"
    url = f"sqlite+aiosqlite:///{path}"
    monkeypatch.setenv("CALLHUB_DATABASE_URL", url)
    said = (f"callhub: database {url} does not exist: no file {path} "
            "(`callhub db upgrade` creates it)")
    window = ["--from", "2026-11-29T00:00Z", "--to", "2026-11-29T01:00Z"]
    for args in (["db", "current"], ["db", "current", "--database-url", "sqlite:///typo.db"],
                 ["db", "quarantine"], ["db", "restore", "--all"],
                 ["report", "--date", "2026-11-29"]):
        code = main(args)
        out, err = capsys.readouterr()
        assert (code, out) == (1, ""), args
        relative = "--database-url" in args
        assert err.splitlines() == [said.replace(url, "sqlite:///typo.db") if relative
                                    else said], args
        assert list(tmp_path.iterdir()) == [], args
    cel = tmp_path / "cel.db"
    code = main(["backfill", "--pbx", "main", *window,
                 "--cel-database-url", f"sqlite+aiosqlite:///{cel}"])
    assert code == 1 and capsys.readouterr().err.splitlines() == [
        f"callhub backfill: cannot read the CEL table 'cel': database "
        f"sqlite+aiosqlite:///{cel} does not exist: no file {cel}"]
    gone = tmp_path / "gone" / "callhub.db"
    assert main(["db", "current", "--database-url", f"sqlite:///{gone}"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"callhub: database sqlite:///{gone} does not exist: no file {gone} "
        f"(the directory {gone.parent} does not exist)"]
    assert list(tmp_path.iterdir()) == []
    assert main(["db", "upgrade"]) == 0 and path.exists()  # upgrade creates it, as before
    capsys.readouterr()
    assert main(["db", "current"]) == 0 and "up to date" in capsys.readouterr().out


def test_an_upgrade_to_a_target_alembic_cannot_parse_is_one_line_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """These targets trip an assert in Alembic's parser: `db upgrade ''` was an
    AssertionError traceback, on a new database and on one that exists."""
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    new, existing = tmp_path / "new.db", tmp_path / "existing.db"
    assert main(["db", "upgrade", "0001", "--database-url", f"sqlite:///{existing}"]) == 0
    capsys.readouterr()
    for target in ("", "@", "head-99", "heads+1"):
        for path in (new, existing):
            url = f"sqlite:///{path}"
            assert main(["db", "upgrade", target, "--database-url", url]) == 1, target
            out, err = capsys.readouterr()
            [said] = err.splitlines()
            assert out == "" and said.startswith(
                f"callhub: database {url}: Can't locate revision identified by {target!r} "
                "(this callhub's revisions: 0001, "), err
            assert said.endswith(f", {migrate.head_revision()})"), err
        assert not new.exists(), target
    assert main(["db", "current", "--database-url", f"sqlite:///{existing}"]) == 1
    assert "is at revision 0001: behind" in capsys.readouterr().out


def test_backfill_store_checks_its_database_before_it_reads_cel(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`backfill --store` said that the database it stores in was not there (or had no
    tables) only after reading the window's CEL rows, which may be a large table read for
    nothing. The CEL database here refuses connections: an error about it would mean it
    was read first."""
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    cel = "postgresql+asyncpg://cel:secret@127.0.0.1:1/asterisk"  # nothing listens on port 1
    args = ["backfill", "--pbx", "main", "--from", "2026-11-29T00:00Z",
            "--to", "2026-11-29T01:00Z", "--cel-database-url", cel, "--store"]

    def said(path: Path) -> str:
        monkeypatch.setenv("CALLHUB_DATABASE_URL", f"sqlite+aiosqlite:///{path}")
        code = main(args)
        out, err = capsys.readouterr()
        assert (code, out) == (1, ""), err
        assert len(err.splitlines()) == 1, err
        return err.rstrip("\n")

    gone = tmp_path / "gone.db"
    assert said(gone) == (f"callhub: database sqlite+aiosqlite:///{gone} does not exist: "
                          f"no file {gone} (`callhub db upgrade` creates it)")
    assert not gone.exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert said(empty) == (f"callhub: database sqlite+aiosqlite:///{empty}: callhub's tables "
                           "are not there: `callhub db upgrade` creates them")
    old = tmp_path / "old.db"
    assert main(["db", "upgrade", "0005", "--database-url", f"sqlite:///{old}"]) == 0
    capsys.readouterr()
    assert said(old) == (f"callhub: database sqlite+aiosqlite:///{old}: the database is at "
                         f"revision 0005_call_source, callhub needs {migrate.head_revision()}: "
                         "run `callhub db upgrade`")
    assert main(["db", "upgrade", "--database-url", f"sqlite:///{old}"]) == 0
    capsys.readouterr()
    assert said(old).startswith("callhub backfill: cannot read the CEL table 'cel': database "
                                "postgresql+asyncpg://cel:***@127.0.0.1:1/asterisk: ")


def test_an_upgrade_to_a_revision_named_by_its_file_says_which_revision_is_meant(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first migration's file is 0001_initial.py, its revision `0001`: a target named by
    the file was Alembic's bare "Can't locate revision"."""
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'u.db'}"
    assert main(["db", "upgrade", "0001_initial", "--database-url", url]) == 1
    [said] = capsys.readouterr().err.splitlines()
    assert said.startswith(f"callhub: database {url}: Can't locate revision identified by "
                           "'0001_initial' (this callhub's revisions: 0001, 0002_followups, ")
    assert said.endswith(f", {migrate.head_revision()}; did you mean 0001?)")
    assert main(["db", "upgrade", "0099_nosuch", "--database-url", url]) == 1
    assert capsys.readouterr().err.rstrip().endswith(f", {migrate.head_revision()})")
    assert main(["db", "upgrade", "0001", "--database-url", url]) == 0
    assert capsys.readouterr().out == f"database {url} is at revision 0001\n"


def test_an_upgrade_to_a_wrong_target_leaves_no_new_sqlite_file_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`db upgrade` creates a SQLite file that is not there yet; with a target it could not
    reach it created the file, said the target was wrong, and left the file (an operator's
    review). The target is judged first, in the words it gets on a database that exists."""
    monkeypatch.delenv("CALLHUB_CONFIG", raising=False)
    path = tmp_path / "new.db"
    url = f"sqlite+aiosqlite:///{path}"
    said: dict[str, str] = {}
    for target in ("0001_initial", "0099_nosuch", "+99"):
        assert main(["db", "upgrade", target, "--database-url", url]) == 1, target
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"callhub: database {url}: "), err
        assert len(err.splitlines()) == 1, err
        said[target] = err
        assert list(tmp_path.iterdir()) == [], target
    assert main(["db", "upgrade", "+1", "--database-url", url]) == 0  # reachable from empty
    assert capsys.readouterr().out == f"database {url} is at revision 0001\n"
    for target in ("0001_initial", "0099_nosuch"):
        assert main(["db", "upgrade", target, "--database-url", url]) == 1
        assert capsys.readouterr().err == said[target]
