"""`Database.ping(within=...)`: a database that hangs (its socket open, no answer ever)
is `NoAnswer` at the limit, not a wait until the socket resets.

/readyz's database check (2 s) and the daemon's wait for its database at start (5 s)
ping with a limit. Cut off by a plain `asyncio.timeout`, the ping returned only after
SQLAlchemy's graceful close of its connection (2 s more on a server that hangs): /readyz
took 4 s to say "no answer in 2 s".
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from store_fixtures import DbFactory, TcpProxy, pg_url, via_proxy

from callhub.store import migrate
from callhub.store.read_pool import NoAnswer

LIMIT = 0.5
SLACK = 1.5  # less than SQLAlchemy's 2 s graceful close, which the ping no longer waits for
WAIT = 30.0


async def test_ping_gives_up_within_its_limit_saying_so(
        tmp_path: Path, pg_proxy: TcpProxy) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        await db.ping(within=LIMIT)
        pg_proxy.freeze()
        asked = time.monotonic()
        with pytest.raises(NoAnswer, match=f"^no answer in {LIMIT:g} s$"):
            async with asyncio.timeout(WAIT):
                await db.ping(within=LIMIT)
        took = time.monotonic() - asked
        assert took < LIMIT + SLACK, took
        pg_proxy.thaw()
        await db.ping(within=WAIT)
    finally:
        pg_proxy.thaw()
        await factory.cleanup()

