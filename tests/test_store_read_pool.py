"""The read pool (callhub/store/read_pool.py): its connections go back as they are, so what
a read leaves behind must not reach the next one, and reads wait for one in turn.

A client that goes away mid-page cancels its read while PostgreSQL still runs the
query: the connection must come back to the pool usable, and the pool must not
grow past its size.
"""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa
from store_fixtures import make_call, store

from callhub.config import Settings
from callhub.store import fetch, queries
from callhub.store.db import READ_POOL, Database
from callhub.store.read_pool import Reader, ReadPool

SLEEP = sa.select(sa.func.pg_sleep(30).label("slept"))
ONE = sa.select(sa.literal(1).label("one"))
ACTIVE = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND query LIKE '%pg_sleep%' AND state = 'active' AND pid <> pg_backend_pid()")
BACKENDS = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND backend_type = 'client backend'")


async def scalar(db: Database, stmt: sa.TextClause) -> int:
    async with db.connection() as conn:
        found: int = (await conn.execute(stmt)).scalar_one()
    return found


async def test_a_read_cancelled_mid_query_leaves_the_pool_whole(
        pg_own_database: Database, store_settings: Settings) -> None:
    pg_db = pg_own_database  # its sessions are counted: a database of its own
    await store(pg_db, store_settings, make_call("r1"))
    await pg_db.open_reads()
    before = await scalar(pg_db, BACKENDS)
    reads = [asyncio.create_task(pg_db.read(lambda c: fetch.rows(c, SLEEP, {})))
             for _ in range(READ_POOL)]  # every connection of the pool in a long query
    deadline = time.monotonic() + 10
    while await scalar(pg_db, ACTIVE) < READ_POOL:  # PostgreSQL runs them all
        if time.monotonic() > deadline:
            raise AssertionError("the reads never reached PostgreSQL")
        await asyncio.sleep(0.01)  # a poll of another process, not a pause
    for read in reads:
        read.cancel()
    done = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in done)

    pages = await asyncio.wait_for(asyncio.gather(*(
        pg_db.read(lambda c: queries.list_calls(c, queries.CallFilter(), 10))
        for _ in range(3 * READ_POOL))), 10)  # not behind 30 s of sleeps
    assert all([p["linkedid"] for p in page] == ["r1"] for page in pages)
    assert await scalar(pg_db, ACTIVE) == 0  # the sleeps were cancelled in PostgreSQL too
    assert await scalar(pg_db, BACKENDS) <= before


async def test_reads_get_a_connection_in_the_order_they_asked(pg_db: Database) -> None:
    """Six clients in closed loop on two connections: each read is served in its turn. A
    client that gives a connection back and asks again at once does not take it back
    from the read that was waiting (asyncpg's pool alone lets it)."""
    reads = ReadPool(pg_db.engine.url, pg_db.engine.dialect, 2, schema=pg_db.schema,
                     connect_timeout=5)
    asked: list[int] = []
    served: list[int] = []

    async def client() -> None:
        for _ in range(20):
            turn = len(asked)
            asked.append(turn)

            async def work(conn: Reader, turn: int = turn) -> None:
                served.append(turn)
                await fetch.rows(conn, ONE, {})

            await reads.run(work)

    try:
        assert await reads.open() == (2, None)  # no read waits for a connection to open
        await asyncio.gather(*(client() for _ in range(6)))
    finally:
        await reads.close()
    assert len(served) == 120
    assert served == sorted(served)
