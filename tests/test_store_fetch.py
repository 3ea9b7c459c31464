"""The list pages' rows read straight through asyncpg (callhub.store.fetch), on the read
pool's connections (callhub.store.read_pool), are the rows SQLAlchemy reads on its own
connection, value for value and type for type; a failing statement is a DBAPIError as
before."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from store_fixtures import T0, make_call, store

from callhub.config import Settings
from callhub.records import Transfer
from callhub.store import fetch, queries, tables, worklist
from callhub.store.db import Database

T0_AT = datetime.fromtimestamp(T0, UTC)


async def sqlalchemy_dicts(conn: AsyncConnection, stmt: Any, params: Any) -> list[dict[str, Any]]:
    result = await conn.execute(stmt, dict(params))
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


async def sqlalchemy_rows(conn: AsyncConnection, stmt: Any, params: Any) -> list[Any]:
    return list((await conn.execute(stmt, dict(params))).all())


async def test_pages_read_through_asyncpg_equal_sqlalchemys(
        pg_db: Database, store_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["张三", 'say "hi"\\ \t\n\x01 \u2028', None, "Zoë", ""]
    records = [make_call(f"c{n}", at=T0 + 60 * n + n / 7, outcome=outcome,
                         caller_number=f"+86139000000{n % 3:02d}", caller_name=names[n % 5],
                         ring_seconds=[7.0, 0.1 + 0.2, 1e-06, 12.5][n % 4],
                         transfers=[Transfer("blind", "PJSIP/1002", T0 + n)] if n % 4 == 0 else [])
               for n, outcome in enumerate(["answered", "missed", "abandoned", "missed"] * 5)]
    await store(pg_db, store_settings, *records)
    pages: list[tuple[Any, ...]] = [
        (queries.list_calls, queries.CallFilter(), 7, None),
        (queries.list_calls, queries.CallFilter(outcome="missed", min_rings=1), 100, None),
        (queries.list_calls, queries.CallFilter(worklist_status="pending"), 100, None),
        (queries.list_worklist, queries.WorklistFilter(), 100, None),
        (queries.list_worklist, queries.WorklistFilter(number="+8613900000001"), 1, None),
    ]
    for list_page, page_filter, limit, after in pages:
        async def page(c: AsyncConnection, list_page: Any = list_page, f: Any = page_filter,
                       limit: int = limit, after: Any = after) -> Any:
            return await list_page(c, f, limit, after)

        fast = await pg_db.read(page)
        with monkeypatch.context() as patch:
            patch.setattr(fetch, "dicts", sqlalchemy_dicts)
            patch.setattr(fetch, "rows", sqlalchemy_rows)
            async with pg_db.connection() as conn:
                slow = await page(conn)
        assert fast, page_filter
        assert fast == slow, page_filter
        for got, want in zip(fast, slow, strict=True):
            assert [type(v) for v in got.values()] == [type(v) for v in want.values()]


async def test_a_failing_statement_is_a_dbapi_error(pg_db: Database) -> None:
    stmt = sa.select(sa.literal(1).label("one")).where(
        sa.literal(1) / sa.bindparam("zero", type_=sa.Integer) == 1)
    with pytest.raises(DBAPIError) as raised:
        await pg_db.read(lambda c: fetch.dicts(c, stmt, {"zero": 0}))
    assert raised.value.connection_invalidated is False
    assert "division by zero" in str(raised.value.orig)
    assert await pg_db.read(lambda c: fetch.dicts(c, stmt, {"zero": 1})) == [{"one": 1}]


async def test_a_lists_worklist_entries_and_latest_sms_are_the_single_calls(
        any_db: Database, store_settings: Settings) -> None:
    """A list page reads its calls' worklist entries and SMS statuses by a second statement
    (queries._add_extras); the single call still joins them in one. Both agree, for calls
    with no entry, a pending one, a dismissed one, no SMS, one, and two (the later shown)."""
    records = [make_call(f"x{n}", at=T0 + 60 * n, outcome=outcome,
                         caller_number=f"+8613900001{n:03d}")
               for n, outcome in enumerate(["answered", "missed", "missed", "abandoned",
                                            "missed", "answered"])]
    ids = await store(any_db, store_settings, *records)
    async with any_db.begin() as conn:
        entries = (await conn.execute(sa.select(tables.worklist_calls.c.entry_id)
                                      .where(tables.worklist_calls.c.call_id.in_(ids[1:3]))
                                      )).scalars().all()
        await worklist.mark(conn, entries[0], "dismissed", "test", None)
        for n, (call_id, status) in enumerate([(ids[0], "failed"), (ids[0], "sent"),
                                               (ids[2], "sent"), (ids[2], "failed"),
                                               (ids[3], "queued")]):
            await conn.execute(sa.insert(tables.sms_outbox).values(
                idempotency_key=f"k{n}", pbx="main", linkedid=f"x{n}", call_id=call_id,
                kind="answered", to_number="13900000000", text="t", params={},
                status=status, next_attempt_at=T0_AT, call_ended_at=T0_AT, created_at=T0_AT))
    extras = ("worklist_id", "worklist_status", "sms_status")
    listed = await any_db.read(lambda c: queries.list_calls(c, queries.CallFilter(), 100))
    assert len(listed) == len(ids)
    async with any_db.connection() as conn:
        for row in listed:
            single = await queries.get_call(conn, row["id"])
            assert single is not None
            assert {k: row[k] for k in extras} == {k: single[k] for k in extras}
    by_id = {row["id"]: row for row in listed}
    assert [by_id[i]["sms_status"] for i in ids[:4]] == ["sent", None, "failed", "queued"]
    assert by_id[ids[1]]["worklist_status"] != by_id[ids[2]]["worklist_status"]
