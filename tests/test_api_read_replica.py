"""`read_database_url`: the API's list and stats reads from a read replica.

A replica here is a proxy in front of the same PostgreSQL: what matters is
which connections carry what. Pages read through it (cut it and they answer
503, restore it and they answer again), while a supervisor's writes go to the
primary whatever the replica's state. A replica without PostgreSQL both sides
is refused at start with the settings named; config check masks its password.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from store_fixtures import T0, DbFactory, TcpProxy, auth, make_call, pg_url, store, via_proxy

from callhub.api.app import make_app
from callhub.cli import main
from callhub.config import Settings, load_settings
from callhub.store import migrate
from callhub.store.db import Database

READS = ("/api/v1/calls", "/api/v1/worklist",
         "/api/v1/stats?from=2026-01-01&to=2026-02-01&group_by=hour")


async def test_pages_read_from_the_replica_and_writes_go_to_the_primary(
        tmp_path: Path, pg_proxy: TcpProxy, api_settings: Settings) -> None:
    factory = DbFactory("postgresql", tmp_path)
    try:
        db = await factory.create(read_url=via_proxy(pg_url(), pg_proxy))
        await migrate.upgrade(db)
        (call_id,) = await store(db, api_settings, make_call(
            "m1", at=T0, outcome="missed", caller_number="+8613900000001"))
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(api_settings, db)))
        await client.start_server()
        try:
            for page in READS:
                response = await client.get(page, headers=auth("supervisor"))
                assert response.status == 200, await response.text()
            pg_proxy.cut()  # the replica gone
            for page in READS:
                response = await client.get(page, headers=auth("supervisor"))
                assert response.status == 503, page
            response = await client.patch(f"/api/v1/calls/{call_id}", headers=auth("supervisor"),
                                          json={"resolution": "resolved"})
            assert response.status == 200, await response.text()  # the primary
            pg_proxy.restore()
            response = await client.get("/api/v1/calls", headers=auth("supervisor"))
            assert response.status == 200
            assert [c["resolution"] for c in (await response.json())["items"]] == ["resolved"]
        finally:
            await client.close()
    finally:
        await factory.cleanup()


def test_a_replica_needs_postgresql_on_both_sides() -> None:
    with pytest.raises(ValueError, match="read_database_url"):
        Database.connect("sqlite+aiosqlite:///x.db",
                         read_url="postgresql+asyncpg://u:p@replica/callhub")
    with pytest.raises(ValueError, match="read_database_url"):
        Database.connect("postgresql+asyncpg://u:p@primary/callhub",
                         read_url="sqlite+aiosqlite:///x.db")


def test_config_check_shows_the_replica_masked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "callhub.toml"
    path.write_text('database_url = "postgresql+asyncpg://callhub:pw-1@primary/callhub"\n'
                    'read_database_url = "postgresql+asyncpg://callhub:pw-2@replica/callhub"\n')
    assert main(["config", "check", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["read_database_url"] == "postgresql+asyncpg://callhub:***@replica/callhub"
    other = "postgresql+asyncpg://callhub:pw-3@other/callhub"
    assert load_settings(path, env={"CALLHUB_READ_DATABASE_URL": other}).read_database_url \
        == other
