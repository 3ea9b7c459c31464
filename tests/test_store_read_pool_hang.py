"""Opening the read pool at the start on a PostgreSQL that hangs (sockets open, no answer).

`Database.open_reads` (the daemon's start, once the database answered; the API's own
start) opens the read pool's connections all at once and has no limit of its own.
It needs none: asyncpg's connect timeout (`Database.connect_timeout`, 5 s) covers the
whole handshake, and the pool's set-up of a new connection asks the server nothing
(its json and jsonb codecs are pg_catalog's, which asyncpg knows without a query). A
database that hangs then holds the start no longer than that timeout; the reads open
their connections later, within their own limit.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import sqlalchemy as sa
from store_fixtures import DbFactory, TcpProxy, pg_url, via_proxy
from structlog.testing import capture_logs

from callhub.store import fetch, migrate
from callhub.store.db import READ_POOL

CONNECT = 0.5  # the connect timeout here; 5 s in production
SLACK = 3.0  # what a loaded test machine may add to it
WAIT = 30.0  # the test's own bound
ONE = sa.select(sa.literal(1).label("one"))


async def test_opening_the_read_pool_on_a_hung_database_ends_at_the_connect_timeout(
        tmp_path: Path, pg_proxy: TcpProxy) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy), busy_timeout=CONNECT)
        await migrate.upgrade(db)
        pg_proxy.freeze()
        asked = time.monotonic()
        with capture_logs() as logs:
            async with asyncio.timeout(WAIT):
                await db.open_reads()
        took = time.monotonic() - asked
        assert took < CONNECT + SLACK, took
        assert [(e["event"], e["opened"], e["error"]) for e in logs] == [
            ("db.pool_not_opened", 0, "TimeoutError")]

        pg_proxy.thaw()
        async with asyncio.timeout(WAIT):
            answers = await asyncio.gather(*(db.read(lambda conn: fetch.rows(conn, ONE, {}))
                                             for _ in range(2 * READ_POOL)))
        assert answers == [[(1,)]] * (2 * READ_POOL)
    finally:
        pg_proxy.thaw()
        await factory.cleanup()
