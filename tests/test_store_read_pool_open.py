"""The API's read pool is open before the first request (callhub/store/db.py).

Opening a PostgreSQL connection costs tens of milliseconds; a pool that opened
them on demand made the first burst of requests after a start wait for ten of
them at once. A database not reachable at start is not an error there: the
reads open their connections later, and the reason is logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import make_url
from store_fixtures import TcpProxy, auth, pg_url, via_proxy
from structlog.testing import capture_logs

from callhub.api.app import make_app
from callhub.config import Settings
from callhub.store.db import READ_POOL, Database
from callhub.store.read_pool import Reader, ReadPool


async def backends(db: Database) -> int:
    async with db.connection() as conn:
        found: int = (await conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'"))).scalar_one()
    return found


async def test_the_read_pool_is_open_when_the_app_starts(
        pg_own_database: Database, api_settings: Settings) -> None:
    db = pg_own_database  # its sessions are counted: a database of its own
    before = await backends(db)
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(api_settings, db)))
    await client.start_server()
    try:
        assert await backends(db) == before + READ_POOL  # before any request
        response = await client.get("/api/v1/calls", headers=auth("supervisor"))
        assert response.status == 200
        assert await backends(db) == before + READ_POOL  # none opened for it
    finally:
        await client.close()


async def test_a_database_not_reachable_at_start_is_logged_not_raised() -> None:
    db = Database.connect("postgresql+asyncpg://callhub:secret@127.0.0.1:1/callhub")
    try:
        with capture_logs() as logs:
            await db.open_reads()
        [event] = [e for e in logs if e["event"] == "db.pool_not_opened"]
        assert (event["pool"], event["opened"]) == ("read", 0) and "secret" not in repr(event)
    finally:
        await db.close()


async def test_an_open_cancelled_midway_gives_back_the_connections_it_took(
        pg_db: Database, pg_proxy: TcpProxy) -> None:
    """`open` takes every connection at once (so that each is a new one). Cancelled while
    one is still opening (here through a frozen proxy), the one it already took goes back:
    the next read gets it at once instead of opening another through the cut."""
    url = make_url(via_proxy(pg_url(), pg_proxy))
    reads = ReadPool(url, pg_db.engine.dialect, 2, schema=pg_db.schema, connect_timeout=30)

    async def taken(conn: Reader) -> None:
        """A read that needs a connection and no answer from the database."""

    try:
        await reads.run(taken)  # one connection open, idle in the pool
        pg_proxy.freeze()
        opening = asyncio.create_task(reads.open())
        async with asyncio.timeout(10):
            await pg_proxy.holding.wait()  # the second connection is held at the proxy
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        async with asyncio.timeout(5):
            await reads.run(taken)
    finally:
        pg_proxy.thaw()
        await reads.close()
