"""GET /worklist keyset pages: pending first, oldest first, every entry once, with each filter."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient
from store_fixtures import T0, auth, make_call, store

from callhub.config import Settings
from callhub.store import worklist
from callhub.store.db import Database
from callhub.store.tables import worklist_entries

Client = TestClient[Any, Any]
SUP = auth("supervisor")


async def desk_of_misses(db: Database, settings: Settings) -> list[Any]:
    """24 misses (ties in arrival time, two lines), a third called back, some dismissed;
    the worklist rows as stored."""
    records = []
    for i in range(24):
        records.append(make_call(f"m{i}", at=T0 + 60 * (i // 4), outcome="missed",
                                 caller_number=f"+86138000{i:05d}",
                                 line="hotline" if i % 3 else "repairs"))
    for i in range(0, 24, 3):  # called back, in reverse order of their misses
        records.append(make_call(f"cb{i}", at=T0 + 3600 - i, direction="outbound",
                                 called_number=f"+86138000{i:05d}"))
    await store(db, settings, *records)
    async with db.begin() as conn:
        ids = (await conn.execute(sa.select(worklist_entries.c.id)
                                  .where(worklist_entries.c.status == "pending")
                                  .order_by(worklist_entries.c.id))).scalars().all()
        for entry_id in ids[::5]:
            await worklist.mark(conn, entry_id, "dismissed", "王芳", None)
    async with db.connection() as conn:
        return list((await conn.execute(sa.select(worklist_entries))).all())


async def pages(api: Client, limit: int, **params: Any) -> list[int]:
    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        response = await api.get("/api/v1/worklist", params=query, headers=SUP)
        assert response.status == 200, await response.text()
        body = await response.json()
        assert len(body["items"]) <= limit
        seen += [e["id"] for e in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        assert len(cursor) <= 40  # the documented maxLength


@pytest.mark.parametrize("limit", [1, 4, 7, 100])
async def test_pages_list_every_entry_once_in_order(
        api: Client, any_db: Database, api_settings: Settings, limit: int) -> None:
    rows = await desk_of_misses(any_db, api_settings)
    assert {r.status for r in rows} == {"pending", "handled", "dismissed"}
    assert len({r.first_missed_at for r in rows}) < len(rows)  # ties on the first miss

    def expected(keep: Any = lambda r: True) -> list[int]:
        chosen = [r for r in rows if keep(r)]
        chosen.sort(key=lambda r: (r.status != "pending", r.first_missed_at, r.id))
        return [r.id for r in chosen]

    middle = datetime.fromtimestamp(T0 + 120, UTC).isoformat()
    assert await pages(api, limit) == expected()
    for status in worklist.STATUSES:
        assert await pages(api, limit, status=status) == expected(
            lambda r, s=status: r.status == s)
    assert await pages(api, limit, line="repairs") == expected(lambda r: r.line == "repairs")
    assert await pages(api, limit, **{"from": middle}) == expected(
        lambda r: r.first_missed_at >= datetime.fromtimestamp(T0 + 120, UTC))
    assert await pages(api, limit, status="handled", to=middle) == expected(
        lambda r: r.status == "handled"
        and r.first_missed_at < datetime.fromtimestamp(T0 + 120, UTC))
    number = rows[4].number
    assert await pages(api, limit, number=number) == expected(lambda r: r.number == number)


@pytest.mark.parametrize("cursor", [
    base64.urlsafe_b64encode(b"o100").decode(),  # an offset cursor of an older callhub
    "AAAAAAAAAAAAAAAAAAAAAAAA", "x", "w" * 40, "////",
])
async def test_a_cursor_it_did_not_make_is_a_400(api: Client, cursor: str) -> None:
    response = await api.get("/api/v1/worklist", params={"cursor": cursor}, headers=SUP)
    assert response.status == 400
    assert (await response.json())["parameter"] == "cursor"
