"""The read pool's connections go back as they are, so what a read leaves behind must not
reach the next one (callhub/store/read_pool.py).

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

SLEEP = sa.select(sa.func.pg_sleep(30).label("slept"))
ACTIVE = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND query LIKE '%pg_sleep%' AND state = 'active' AND pid <> pg_backend_pid()")
BACKENDS = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND backend_type = 'client backend'")


async def scalar(db: Database, stmt: sa.TextClause) -> int:
    async with db.connection() as conn:
        found: int = (await conn.execute(stmt)).scalar_one()
    return found


async def test_a_read_cancelled_mid_query_leaves_the_pool_whole(
        pg_db: Database, store_settings: Settings) -> None:
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
