"""The list pages' reads on PostgreSQL: a pool of their own, in autocommit, without a pre-ping.

A connection of that pool that died with the server (here: every connection
cut by a proxy, then the database back) is found dead by the page's own
query; the read is made again on a new connection, so the first request after
the outage is answered as the pre-ping made it answered before. While the
database is away the pages answer 503.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from store_fixtures import T0, DbFactory, TcpProxy, auth, make_call, pg_url, store, via_proxy

from callhub.api.app import make_app
from callhub.config import Settings
from callhub.store import migrate

PAGES = ("/api/v1/calls", "/api/v1/worklist")


async def test_pages_answer_at_once_after_the_database_comes_back(
        tmp_path: Path, pg_proxy: TcpProxy, api_settings: Settings) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        await store(db, api_settings, make_call("m1", at=T0, outcome="missed",
                                                caller_number="+8613900000001"))
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(api_settings, db)))
        await client.start_server()
        try:
            for _ in range(3):  # the read pool now holds open connections
                for page in PAGES:
                    response = await client.get(page, headers=auth("supervisor"))
                    assert response.status == 200
            pg_proxy.cut()  # the server gone and back: every pooled connection is dead
            pg_proxy.restore()
            for page in PAGES:
                response = await client.get(page, headers=auth("supervisor"))
                assert response.status == 200, await response.text()
            pg_proxy.cut()
            for page in PAGES:
                response = await client.get(page, headers=auth("supervisor"))
                assert response.status == 503
                assert (await response.json())["error"] == "database_unavailable"
            pg_proxy.restore()
            for page in PAGES:
                response = await client.get(page, headers=auth("supervisor"))
                assert response.status == 200, await response.text()
                assert len((await response.json())["items"]) == 1
        finally:
            await client.close()
    finally:
        await factory.cleanup()

