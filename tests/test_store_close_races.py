"""Two act on the same row at the same moment. Two supervisors closing one worklist
entry or follow-up: one wins, the other is told it was closed (InvalidTransition, the
API's 409), and the row keeps the winner's who and how. A category rule applied by two
at once (the keeper and a request): its follow-ups exist once, and neither fails.

On PostgreSQL (READ COMMITTED) the second close reads the row as still open while the
first is uncommitted, then waits on its row lock; the test holds the first transaction
open until the database shows the second one waiting, so the interleaving is the racy
one every run, not by chance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from store_fixtures import T0, make_call, store

from callhub.config import Settings
from callhub.store import followups, worklist
from callhub.store.db import Database
from callhub.store.errors import InvalidTransition
from callhub.store.tables import calls, worklist_entries
from callhub.store.tables import followups as followups_table

Close = Callable[[AsyncConnection, str], Awaitable[object]]


async def wait_until_blocked(db: Database, first: AsyncConnection) -> None:
    """Return once some session waits on a lock the first transaction holds."""
    first_pid = (await first.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
    async with db.connection() as watcher:
        for _ in range(2000):
            waiting = (await watcher.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE :pid = ANY(pg_blocking_pids(pid))"), {"pid": first_pid})).scalar_one()
            if waiting:
                return
            await watcher.rollback()
            await asyncio.sleep(0.005)  # polling the database's own view, not a guess
    pytest.fail("the second close never waited on the first one's row lock")


async def race(db: Database, close: Close) -> object:
    """The first close holds its transaction until the second is waiting on it; what
    the second returned (or raised: the exception, returned)."""
    async with db.begin() as first:
        await close(first, "Alice")
        second = asyncio.create_task(_in_transaction(db, close, "Bob"))
        await wait_until_blocked(db, first)
    try:
        return await second
    except InvalidTransition as exc:
        return exc


async def _in_transaction(db: Database, close: Close, who: str) -> object:
    async with db.begin() as conn:
        return await close(conn, who)


async def assert_the_first_close_stands(db: Database, close: Close, status: sa.Column[str],
                                        who: sa.Column[str], first_status: str) -> None:
    """The second close is refused, and the row keeps the first one's status and who."""
    assert isinstance(await race(db, close), InvalidTransition)
    async with db.connection() as conn:
        row = (await conn.execute(sa.select(status, who))).one()
    assert tuple(row) == (first_status, "Alice")


async def test_two_supervisors_closing_one_worklist_entry_one_gets_a_conflict(
        pg_db: Database, store_settings: Settings) -> None:
    await store(pg_db, store_settings, make_call("m1", at=T0, outcome="missed"))
    async with pg_db.connection() as conn:
        entry_id = (await conn.execute(sa.select(worklist_entries.c.id))).scalar_one()

    async def close(conn: AsyncConnection, who: str) -> object:
        status = "handled" if who == "Alice" else "dismissed"
        return await worklist.mark(conn, entry_id, status, who, None)

    await assert_the_first_close_stands(pg_db, close, worklist_entries.c.status,
                                        worklist_entries.c.handled_by, "handled")


async def test_two_supervisors_closing_one_follow_up_one_gets_a_conflict(
        pg_db: Database, store_settings: Settings) -> None:
    (call_id,) = await store(pg_db, store_settings, make_call("c1", at=T0))
    now = datetime.now(UTC)
    async with pg_db.begin() as conn:
        (followup_id,) = await followups.create(conn, call_id, [now], now=now)

    async def close(conn: AsyncConnection, who: str) -> object:
        status = "done" if who == "Alice" else "cancelled"
        await followups.close(conn, followup_id, status, now=now, who=who)
        return None

    await assert_the_first_close_stands(pg_db, close, followups_table.c.status,
                                        followups_table.c.closed_by, "done")


async def test_a_rule_applied_by_two_at_once_makes_its_follow_ups_once(
        pg_db: Database, store_settings: Settings) -> None:
    settings = replace(store_settings, followup_rules={"repair": (3600.0, 7200.0)})
    (call_id,) = await store(pg_db, settings, make_call("c1", at=T0))
    async with pg_db.begin() as conn:
        await conn.execute(sa.update(calls).values(category="repair"))
    now = datetime.now(UTC)

    async def apply(conn: AsyncConnection, who: str) -> object:
        return await followups.apply_rule(conn, call_id, settings, now=now)

    assert await race(pg_db, apply) == []
    async with pg_db.connection() as conn:
        due = (await conn.scalars(sa.select(followups_table.c.due_at)
                                  .order_by(followups_table.c.due_at))).all()
    ended = datetime.fromtimestamp(make_call("c1", at=T0).ended_at, UTC)
    assert due == [ended + timedelta(seconds=d) for d in settings.followup_rules["repair"]]
