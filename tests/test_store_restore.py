"""`callhub db restore`: quarantined calls stored again once their cause is mended, as the
writer would have stored them, never twice; what is refused again, or is no call, stays."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from store_fixtures import (
    T0,
    DbFactory,
    TcpProxy,
    assert_worklist_counts_each_call_once,
    make_call,
    pg_url,
    via_proxy,
)

from callhub.config import Settings
from callhub.store import migrate, quarantine
from callhub.store.db import Database
from callhub.store.restore import restore
from callhub.store.tables import calls, worklist_entries
from callhub.store.writer import CallWriter

WAIT = 30.0
CALLER = "+8613800000077"
REFUSE = ("CREATE FUNCTION refuse_call() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
          "IF NEW.linkedid = 'p' THEN RAISE EXCEPTION 'the site refuses this call' "
          "USING ERRCODE = '23514'; END IF; RETURN NEW; END $$")


async def callhub_db(url: str, cwd: Path, *args: str) -> tuple[int, str, str]:
    """`callhub db ARGS` as an admin runs it against `url`: exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
    env["CALLHUB_DATABASE_URL"] = url
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", "db", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stored(db: Database) -> list[str]:
    async with db.connection() as conn:
        return list(await conn.scalars(sa.select(calls.c.linkedid).order_by(calls.c.id)))


async def test_a_call_a_trigger_refused_is_restored_once_the_trigger_is_gone(
        tmp_path: Path, store_settings: Settings) -> None:
    """A site's trigger refuses one missed call (a check violation): the writer quarantines
    it. `callhub db restore --all` keeps it while the trigger is there (saying why) and
    keeps a damaged spool line (no call); with the trigger dropped, restoring its id stores
    it once, its miss joins its caller's worklist entry, and a second restore finds it
    gone."""
    factory = DbFactory("postgresql", tmp_path)
    db = await factory.create()
    url = make_url(pg_url())
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432, schema=db.schema)
    await proxy.start()
    through = via_proxy(pg_url(), proxy)
    try:
        await migrate.upgrade(db)
        async with db.begin() as conn:
            await conn.execute(sa.text(REFUSE))
            await conn.execute(sa.text(
                "CREATE TRIGGER refuse_call BEFORE INSERT OR UPDATE ON calls "
                "FOR EACH ROW EXECUTE FUNCTION refuse_call()"))
        records = [make_call("a", at=T0, outcome="missed", caller_number=CALLER),
                   make_call("p", at=T0 + 60, outcome="missed", caller_number=CALLER),
                   make_call("b", at=T0 + 120)]
        writer = CallWriter(db, store_settings)
        for record in records:
            writer.submit(record)
        await writer.start()
        async with asyncio.timeout(WAIT):
            await writer.wait_written()
        await writer.stop()
        assert writer.quarantined == 1 and await stored(db) == ["a", "b"]
        async with db.begin() as conn:
            await quarantine.add_line(conn, b"\x00garbage", "ValueError: not JSON")
            listed = {q["linkedid"]: q["id"] for q in await quarantine.listing(conn)}

        code, out, _ = await callhub_db(through, tmp_path, "restore", "--all")
        assert code == 1
        kept = dict(line.split("\t", 1) for line in out.splitlines())
        assert "the site refuses this call" in kept[str(listed["p"])]
        assert "not a call record" in kept[str(listed[""])]
        assert await stored(db) == ["a", "b"]

        async with db.begin() as conn:
            await conn.execute(sa.text("DROP TRIGGER refuse_call ON calls"))
        code, out, err = await callhub_db(through, tmp_path, "restore", str(listed["p"]))
        assert (code, out) == (0, ""), err
        assert "1 call stored again, 0 kept" in err
        assert sorted(await stored(db)) == ["a", "b", "p"]
        async with db.connection() as conn:
            assert [q["linkedid"] for q in await quarantine.listing(conn)] == [""]
            entries = (await conn.execute(sa.select(worklist_entries.c.number,
                                                    worklist_entries.c.call_count))).all()
        assert [tuple(e) for e in entries] == [(CALLER, 2)]
        await assert_worklist_counts_each_call_once(db)

        code, out, _ = await callhub_db(through, tmp_path, "restore", str(listed["p"]))
        assert code == 1 and "not in the quarantine" in out
        assert sorted(await stored(db)) == ["a", "b", "p"]
    finally:
        await proxy.stop()
        await factory.cleanup()


async def test_restoring_a_call_stored_meanwhile_stores_it_once(
        any_db: Database, store_settings: Settings) -> None:
    """The same call quarantined and then stored (a later, readable copy of it): restoring
    the quarantined copy updates the one row, on SQLite as on PostgreSQL."""
    record = make_call("q", at=T0, outcome="missed", caller_number=CALLER)
    async with any_db.begin() as conn:
        await quarantine.add(conn, record, "IntegrityError: refused once")
    writer = CallWriter(any_db, store_settings)
    writer.submit(record)
    await writer.start()
    async with asyncio.timeout(WAIT):
        await writer.wait_written()
    await writer.stop()
    done = await restore(any_db, store_settings, None)
    assert len(done.stored) == 1 and done.kept == [] and done.missing == []
    assert await stored(any_db) == ["q"]
    await assert_worklist_counts_each_call_once(any_db)
    async with any_db.connection() as conn:
        assert await quarantine.count(conn) == 0


async def test_the_listing_and_the_restore_count_one_call_in_the_singular(
        tmp_path: Path, store_settings: Settings) -> None:
    """They said "1 quarantined call(s) shown" and "1 call(s) stored again", where the
    other commands now say "1 call" and "2 calls" (argtypes.count)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    db = Database.connect(url)
    try:
        await migrate.upgrade(db)
        async with db.begin() as conn:
            for linkedid in ("one", "two", "three"):
                await quarantine.add(conn, make_call(linkedid, at=T0), "a test's refusal")
        code, out, err = await callhub_db(url, tmp_path, "quarantine", "--limit", "1")
        assert (code, len(out.splitlines()), err) == (0, 1, "1 quarantined call shown\n")
        code, out, err = await callhub_db(url, tmp_path, "quarantine")
        assert (code, len(out.splitlines()), err) == (0, 3, "3 quarantined calls shown\n")
        ids = [line.split("\t")[0] for line in out.splitlines()]
        code, out, err = await callhub_db(url, tmp_path, "restore", ids[0])
        assert (code, out, err) == (0, "", "1 call stored again, 0 kept\n")
        code, out, err = await callhub_db(url, tmp_path, "restore", "--all")
        assert (code, out, err) == (0, "", "2 calls stored again, 0 kept\n")
        assert sorted(await stored(db)) == ["one", "three", "two"]
    finally:
        await db.close()


async def test_restore_writes_no_call_into_a_schema_other_than_this_callhubs(
        tmp_path: Path) -> None:
    """`callhub run` refuses a database an older or a newer callhub's schema; `db restore`,
    which stores calls as the writer does, stored them there all the same (a newer
    callhub's database was written by older code)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    db = Database.connect(url)
    head = migrate.head_revision()
    try:
        await migrate.upgrade(db)
        async with db.begin() as conn:
            await quarantine.add(conn, make_call("q", at=T0), "a test's refusal")
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_later'"))
        code, out, err = await callhub_db(url, tmp_path, "restore", "--all")
        assert (code, out) == (1, "") and err == (
            f"callhub: database {url}: the database is at revision 0099_later, which this "
            f"callhub does not know (its newest is {head}): a newer callhub upgraded it; run "
            "that version or a later one\n")
        async with db.begin() as conn:
            await conn.execute(sa.text(f"UPDATE alembic_version SET version_num = '{head}'"))
        await migrate.downgrade(db, "0011_rollup_figures")
        code, out, err = await callhub_db(url, tmp_path, "restore", "--all")
        assert (code, out) == (1, "") and err == (
            f"callhub: database {url}: the database is at revision 0011_rollup_figures, "
            f"callhub needs {head}: run `callhub db upgrade`\n")
        assert await stored(db) == []
        async with db.connection() as conn:
            assert await quarantine.count(conn) == 1
        await migrate.upgrade(db)
        code, out, err = await callhub_db(url, tmp_path, "restore", "--all")
        assert (code, out, err) == (0, "", "1 call stored again, 0 kept\n")
        assert await stored(db) == ["q"]
    finally:
        await db.close()
