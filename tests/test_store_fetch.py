"""The list pages' rows read straight through asyncpg (callhub.store.fetch) are the rows
SQLAlchemy reads, value for value; a failing statement is a DBAPIError as before."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from store_fixtures import T0, make_call, store

from callhub.config import Settings
from callhub.records import Transfer
from callhub.store import fetch, queries
from callhub.store.db import Database


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
            slow = await pg_db.read(page)
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
