"""Deleting calls deletes their attempts, with no foreign key doing it (migration
0012_attempts_cascade): a trigger per statement on PostgreSQL (and on TRUNCATE), per row
on SQLite."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from store_fixtures import T0, DbFactory, make_call, pg_url

from callhub.config import Settings
from callhub.records import Attempt, CallRecord
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.save import save_calls
from callhub.store.tables import attempts, calls


def with_attempts(n: int) -> CallRecord:
    """A missed call offered to two agents in turn."""
    call = make_call(f"1795922046.{n}", at=T0 + n * 60, outcome="missed")
    call.attempts = [Attempt("PJSIP/1001", None, call.arrived_at, call.arrived_at + 1,
                             call.arrived_at + 11, "no_answer", 10),
                     Attempt("PJSIP/1002", None, call.arrived_at + 11, call.arrived_at + 12,
                             call.arrived_at + 20, "no_answer", 8)]
    return call


async def attempts_by_call(db: Database) -> dict[int, int]:
    async with db.connection() as conn:
        rows = await conn.execute(sa.select(attempts.c.call_id, sa.func.count())
                                  .group_by(attempts.c.call_id))
        return {int(call_id): int(n) for call_id, n in rows}


async def stored(db: Database, settings: Settings, n: int) -> list[int]:
    """`n` calls with their attempts, in one batch (on PostgreSQL past the COPY path's
    threshold)."""
    async with db.begin() as conn:
        saved = await save_calls(conn, [with_attempts(k) for k in range(n)], settings)
    return saved.ids


async def test_deleting_calls_deletes_their_attempts_only(any_db: Database,
                                                          store_settings: Settings) -> None:
    ids = await stored(any_db, store_settings, 40)
    assert await attempts_by_call(any_db) == {i: 2 for i in ids}
    gone, kept = ids[::3], [i for i in ids if i not in ids[::3]]
    async with any_db.begin() as conn:
        await conn.execute(sa.delete(calls).where(calls.c.id.in_(gone)))
    assert await attempts_by_call(any_db) == {i: 2 for i in kept}
    async with any_db.begin() as conn:  # a statement deleting nothing is harmless
        await conn.execute(sa.delete(calls).where(calls.c.id == -1))
    assert await attempts_by_call(any_db) == {i: 2 for i in kept}


async def test_a_delete_from_a_session_on_another_search_path_reaches_its_schema(
        tmp_path: Path, store_settings: Settings) -> None:
    """Two schemas with calls of the same ids: deleting in one leaves the other's attempts."""
    pg_url()
    factory = DbFactory("postgresql", tmp_path)
    try:
        one, other = await factory.create(), await factory.create()
        for db in (one, other):
            await migrate.upgrade(db)
        ids = await stored(one, store_settings, 20)
        assert await stored(other, store_settings, 20) == ids
        admin = await factory.create()  # another schema: its own search_path
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DELETE FROM "{one.schema}".calls WHERE id = ANY(:ids)')
                               .bindparams(ids=ids[:5]))
        assert await attempts_by_call(one) == {i: 2 for i in ids[5:]}
        assert await attempts_by_call(other) == {i: 2 for i in ids}
    finally:
        await factory.cleanup()


async def test_truncating_calls_truncates_their_attempts(pg_db: Database,
                                                        store_settings: Settings) -> None:
    await stored(pg_db, store_settings, 20)
    async with pg_db.begin() as conn:
        await conn.execute(sa.text("TRUNCATE calls CASCADE"))
    assert await attempts_by_call(pg_db) == {}


async def test_the_cascade_holds_across_the_migration_both_ways(
        db_factory: DbFactory, store_settings: Settings) -> None:
    """Attempts stored before the migration are deleted with their calls after it, and
    after a downgrade (the foreign key back) too."""
    db = await db_factory.create()
    await migrate.upgrade(db, "0011_rollup_figures")
    ids = await stored(db, store_settings, 20)
    await migrate.upgrade(db)
    async with db.begin() as conn:
        await conn.execute(sa.delete(calls).where(calls.c.id == ids[0]))
    assert await attempts_by_call(db) == {i: 2 for i in ids[1:]}
    await migrate.downgrade(db, "0011_rollup_figures")
    async with db.begin() as conn:
        await conn.execute(sa.delete(calls).where(calls.c.id == ids[1]))
    assert await attempts_by_call(db) == {i: 2 for i in ids[2:]}


async def test_a_schema_emptied_of_its_tables_but_not_its_functions_migrates_again(
        pg_db: Database, store_settings: Settings) -> None:
    """An admin who empties callhub's schema by dropping its tables leaves the trigger
    functions behind (they belong to no table); the next start failed on "function
    callhub_delete_attempts already exists" and callhub would not start."""
    async with pg_db.begin() as conn:
        tables = (await conn.execute(sa.text(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema()"))).scalars().all()
        await conn.execute(sa.text(
            "DROP TABLE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
    await migrate.upgrade(pg_db)
    assert await migrate.current_revision(pg_db) == migrate.head_revision()
    ids = await stored(pg_db, store_settings, 20)
    async with pg_db.begin() as conn:
        await conn.execute(sa.delete(calls).where(calls.c.id == ids[0]))
    assert await attempts_by_call(pg_db) == {i: 2 for i in ids[1:]}
