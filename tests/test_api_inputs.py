"""Hostile API input that once reached the database or the JSON parser (issue 10): forged
cursors with ids past 2^63 or times in year 1 and 99999 (a 500 from SQLite's integer
overflow, a 503 from the date conversion), and bodies nested 100,000 deep (a 500 from
RecursionError). Each is now a 400 that names what is wrong, on SQLite and PostgreSQL; the
largest values a cursor may carry still reach the database without overflowing it."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from store_fixtures import T0, auth, make_call, store

from callhub.api import cursors, followups
from callhub.api.app import make_app
from callhub.api.base import OPERATIONS
from callhub.config import Settings
from callhub.routing.chooser import Router
from callhub.store.db import Database

Client = TestClient[Any, Any]
ADMIN = auth("admin")
YEAR_1 = -62135596800 * 10**6  # 0001-01-01T00:00:00Z in POSIX microseconds
YEAR_99999 = 3093527980800 * 10**6


def forged(*parts: Any) -> str:
    """A cursor made by hand: the API's encoding, any numbers."""
    raw = json.dumps(list(parts)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def old_calls_cursor(at: str, call_id: int) -> str:
    """The shape the calls list used before (ISO time and id), with hostile values."""
    return base64.urlsafe_b64encode(json.dumps([at, call_id]).encode()).decode().rstrip("=")


NOW = cursors.micros(datetime(2026, 11, 29, tzinfo=UTC))
BAD_CURSORS = {
    "/api/v1/calls": [
        forged("c", NOW, 2**63 + 1), forged("c", NOW, 2**31), forged("c", YEAR_1, 5),
        forged("c", YEAR_99999, 5), forged("c", NOW, 0), forged("c", NOW, True),
        forged("c", str(NOW), 5), forged("w", 0, NOW, 5),
        old_calls_cursor("2026-11-29T08:00:00+00:00", 2**63 + 1),
        old_calls_cursor("0001-01-01T00:00:00+14:00", 1),
        old_calls_cursor("9999-12-31T23:59:59-14:00", 1),
    ],
    "/api/v1/worklist": [
        forged("w", 0, NOW, 2**63 + 1), forged("w", 1, YEAR_1, 5),
        forged("w", 0, YEAR_99999, 5), forged("w", 2, NOW, 5), forged("c", NOW, 5),
    ],
    "/api/v1/followups": [
        forged("f", 0, NOW, 2**63 + 1), forged("f", 1, YEAR_1, 5), forged("f", 0, NOW, 2**31),
        forged("f", 0, YEAR_99999, 5), forged("f", 2, NOW, 5), forged("f", 5),  # an offset
    ],
}


@pytest.fixture
async def full_api(any_db: Database, api_settings: Settings,
                   router: Router) -> AsyncIterator[Client]:
    """Every /api/v1 operation (follow-ups and rota routes too) over the test database."""
    app = make_app(api_settings, any_db, extra_operations=followups.OPERATIONS, router=router)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest.mark.parametrize(("path", "cursor"), [
    (path, cursor) for path, cursors_ in BAD_CURSORS.items() for cursor in cursors_])
async def test_a_forged_cursor_is_a_400_naming_it(full_api: Client, path: str,
                                                   cursor: str) -> None:
    response = await full_api.get(path, params={"cursor": cursor}, headers=ADMIN)
    body = await response.json()
    assert response.status == 400, body
    assert body["parameter"] == "cursor" and "cursor" in body["message"], body


async def test_the_largest_cursor_values_reach_the_database(
        full_api: Client, any_db: Database, api_settings: Settings) -> None:
    call_id, _ = await store(any_db, api_settings, make_call("a", at=T0),
                             make_call("b", at=T0 + 60, outcome="missed"))
    made = await full_api.post(f"/api/v1/calls/{call_id}/followups", headers=ADMIN,
                               json={"after": ["1h"]})
    assert made.status == 201, await made.text()
    top = cursors.micros(datetime(9999, 1, 1, tzinfo=UTC)) - 1
    bottom = cursors.micros(datetime(1900, 1, 1, tzinfo=UTC))
    cases = [("/api/v1/calls", forged("c", top, 2**31 - 1), 2),  # everything is older
             ("/api/v1/calls", forged("c", bottom, 1), 0),  # nothing is older
             ("/api/v1/worklist", forged("w", 0, bottom, 1), 1),  # the pending entry
             ("/api/v1/worklist", forged("w", 1, top, 2**31 - 1), 0),
             ("/api/v1/followups", forged("f", 1, top, 2**31 - 1), 0),
             ("/api/v1/followups", forged("f", 0, bottom, 1), 1)]  # the open one
    for path, cursor, expected in cases:
        response = await full_api.get(path, params={"cursor": cursor}, headers=ADMIN)
        assert response.status == 200, (path, await response.text())
        assert len((await response.json())["items"]) == expected, path
    # and what the API itself hands out still works
    response = await full_api.get("/api/v1/calls", params={"limit": "1"}, headers=ADMIN)
    cursor = (await response.json())["next_cursor"]
    response = await full_api.get("/api/v1/calls", params={"limit": "1", "cursor": cursor},
                                  headers=ADMIN)
    assert [c["linkedid"] for c in (await response.json())["items"]] == ["a"]


def body_operations(client: Client) -> list[tuple[str, str]]:
    return [(op.method, op.path.replace("{id}", "1").replace("{line}", "hotline"))
            for op in client.app[OPERATIONS] if op.body is not None]


async def test_a_body_nested_100000_deep_is_a_400(full_api: Client, any_db: Database,
                                                  api_settings: Settings) -> None:
    await store(any_db, api_settings, make_call("a", at=T0, outcome="missed"))
    operations = body_operations(full_api)
    assert len(operations) >= 9
    for body in (b"[" * 100_000, b'{"note": ' + b"[" * 100_000,
                 b'{"shifts": [' + b'{"days": ' * 20_000):
        for method, path in operations:
            response = await full_api.request(method, path, data=body, headers={
                **ADMIN, "Content-Type": "application/json"})
            answer = await response.json()
            where = (method, path, body[:12], answer)
            assert response.status == 400, where
            assert answer["parameter"] == "body", where
            assert "not valid JSON" in answer["message"] and "recursion" in answer["message"], \
                where


async def test_a_query_time_beyond_the_calendar_is_a_400(full_api: Client) -> None:
    for path, name in (("/api/v1/calls", "from"), ("/api/v1/worklist", "to"),
                       ("/api/v1/stats", "from"), ("/api/v1/rotas/hotline/on-duty", "at")):
        for value in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "99999-01-01"):
            response = await full_api.get(path, params={name: value}, headers=ADMIN)
            body = await response.json()
            assert response.status == 400 and body["parameter"] == name, (path, value, body)


async def test_every_get_refuses_unknown_query_parameters_naming_them(full_api: Client) -> None:
    operations = [op for op in full_api.app[OPERATIONS] if op.path.startswith("/api/v1/")]
    assert all(op.query is not None for op in operations)  # the app checks every one
    gets = [op for op in operations if op.method == "GET"]
    assert {op.path for op in gets} >= {"/api/v1/agents", "/api/v1/rotas/{line}/on-duty",
                                        "/api/v1/calls", "/api/v1/followups"}
    for op in gets:
        path = op.path.replace("{id}", "1").replace("{line}", "hotline")
        response = await full_api.get(path, params={"colour": "red", "outcom": "missed"},
                                      headers=ADMIN)
        body = await response.json()
        assert response.status == 400, (path, body)
        assert body["parameter"] == "colour", (path, body)
        assert "'colour'" in body["message"] and "'outcom'" in body["message"], (path, body)
