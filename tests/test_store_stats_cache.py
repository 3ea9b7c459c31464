"""The stats cache answers from memory only while nothing it counted changed.

Each write that can change a period's figures (a call stored in it, a worklist
entry of it handled by hand) must make the next answer the freshly computed
one; repeated requests with nothing written are answered from memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from store_fixtures import make_call, store
from test_store_stats import DAYS, START, random_calls

from callhub.config import Settings
from callhub.store import stats, stats_cache, worklist
from callhub.store.db import Database
from callhub.store.read_pool import Reader
from callhub.store.stats_cache import StatsCache
from callhub.store.tables import worklist_entries


async def stored_period(db: Database, settings: Settings, seed: int, group_by: str
                        ) -> stats.StatsQuery:
    """Random calls stored; the query of their whole period, by `group_by`, from the rollup."""
    await store(db, settings, *random_calls(seed=seed))
    return stats.StatsQuery(start=START, end=START + timedelta(days=DAYS),
                            tz=ZoneInfo("Asia/Shanghai"), group_by=group_by, rollup=True)


async def fresh(db: Database, q: stats.StatsQuery) -> dict[str, object]:
    async with db.connection() as conn:
        return await stats_cache.figures(conn, q)


async def test_the_cache_answers_until_a_write_changes_the_period(
        any_db: Database, store_settings: Settings) -> None:
    q = await stored_period(any_db, store_settings, 7, "hour")
    cache = StatsCache()

    async def cached() -> dict[str, object]:
        async with any_db.connection() as conn:
            return await cache.compute(conn, q)

    first = await cached()
    assert first == await fresh(any_db, q)
    assert await cached() == first and (cache.hits, cache.misses) == (1, 1)
    changed = await cached()  # each answer is the caller's own: /stats adds figures to it
    changed["totals"]["inbound"] = -1  # type: ignore[index]
    changed["groups"][0]["extra"] = 1  # type: ignore[index]
    assert await cached() == first

    # A call stored in the period: counted at once.
    await store(any_db, store_settings,
                make_call("late", at=START.timestamp() + 86400 + 60, outcome="missed",
                          reason="not_answered", caller_number="+8613900000099"))
    second = await cached()
    assert second != first and second == await fresh(any_db, q)
    assert cache.misses == 2

    # A pending entry of the period handled by hand: counted at once.
    async with any_db.begin() as conn:
        entry_id = (await conn.execute(
            sa.select(worklist_entries.c.id).where(worklist_entries.c.status == "pending",
                                                   worklist_entries.c.first_missed_at
                                                   >= START).limit(1))).scalar_one()
        await worklist.mark(conn, entry_id, "handled", "Li Na", None)
    third = await cached()
    assert third != second and third == await fresh(any_db, q)

    # A callback after the period to a number missed in it: the writer handles the entry,
    # whose first miss is in the period, far from the hour of the call it stores.
    async with any_db.connection() as conn:
        number = (await conn.execute(
            sa.select(worklist_entries.c.number).where(
                worklist_entries.c.status == "pending",
                worklist_entries.c.first_missed_at < START + timedelta(days=DAYS - 2))
            .limit(1))).scalar_one()
    await store(any_db, store_settings,
                make_call("callback", at=(START + timedelta(days=DAYS, hours=5)).timestamp(),
                          direction="outbound", called_number=number))
    handled = await cached()
    assert handled["totals"]["handled_callbacks"] == \
        third["totals"]["handled_callbacks"] + 1  # type: ignore[index]
    assert handled == await fresh(any_db, q)
    third = handled

    # A write outside the period leaves it cached.
    await store(any_db, store_settings,
                make_call("later", at=(START + timedelta(days=DAYS + 3)).timestamp()))
    hits = cache.hits
    assert await cached() == third and cache.hits == hits + 1


async def test_what_the_rollup_cannot_answer_is_not_cached(
        any_db: Database, store_settings: Settings) -> None:
    await store(any_db, store_settings, *random_calls(seed=8))
    q = stats.StatsQuery(start=START, end=START + timedelta(days=DAYS), group_by="agent",
                         tz=ZoneInfo("Asia/Shanghai"), rollup=True)
    cache = StatsCache()
    for _ in range(2):
        async with any_db.connection() as conn:
            assert await cache.compute(conn, q) == await fresh(any_db, replace(q, rollup=False))
    assert (cache.hits, cache.misses) == (0, 0)


async def test_requests_for_figures_being_computed_wait_for_them(
        any_db: Database, store_settings: Settings) -> None:
    q = await stored_period(any_db, store_settings, 9, "hour")
    cache = StatsCache()

    async def cached() -> dict[str, object]:
        async with any_db.connection() as conn:
            return await cache.compute(conn, q)

    answers = await asyncio.gather(*(cached() for _ in range(5)))
    assert all(a == answers[0] for a in answers)
    assert answers[0] == await fresh(any_db, q)
    assert cache.misses == 1 and cache.hits == 4


async def test_the_rendered_answer_is_kept_until_a_write_changes_the_period(
        any_db: Database, store_settings: Settings) -> None:
    q = await stored_period(any_db, store_settings, 10, "day")
    cache = StatsCache()
    renders: list[dict[str, object]] = []

    def render(figures: dict[str, object]) -> bytes:
        renders.append(figures)
        return repr(figures).encode()

    async def rendered() -> bytes:
        async with any_db.connection() as conn:
            return await cache.rendered(conn, q, render)

    first = await rendered()
    assert await rendered() is first and len(renders) == 1
    assert renders[0] == await fresh(any_db, q)
    await store(any_db, store_settings,
                make_call("late", at=START.timestamp() + 3 * 86400, outcome="answered"))
    second = await rendered()
    assert second != first and len(renders) == 2 and renders[1] == await fresh(any_db, q)


def gated_reads(db: Database) -> tuple[stats.Reads, asyncio.Event, asyncio.Event, list[int]]:
    """`db.read` behind a gate, as the read pool's queue holds a read until a connection is
    free: the reads, the gate, an event set as the first read waits at it, and how many
    reads were asked for."""
    gate, waiting, asked = asyncio.Event(), asyncio.Event(), [0]

    async def reads(work: Callable[[Reader], Awaitable[Any]]) -> Any:
        asked[0] += 1
        waiting.set()
        await gate.wait()
        return await db.read(work)

    return reads, gate, waiting, asked


async def test_requests_arriving_while_a_token_read_waits_share_it(
        any_db: Database, store_settings: Settings) -> None:
    q = await stored_period(any_db, store_settings, 11, "hour")
    cache = StatsCache()
    reads, gate, waiting, _ = gated_reads(any_db)
    answers = [asyncio.create_task(cache.compute(reads, q)) for _ in range(3)]
    await waiting.wait()  # the first one's read is queued; the others came after it
    gate.set()
    done = await asyncio.gather(*answers)
    assert all(a == done[0] for a in done) and done[0] == await fresh(any_db, q)
    assert (cache.tokens_read, cache.tokens_shared) == (1, 2)
    assert (cache.misses, cache.hits) == (1, 2)


async def test_a_token_read_already_sent_is_not_shared(
        any_db: Database, store_settings: Settings) -> None:
    """A request that arrives after the read went out reads for itself: the database may
    have answered that read with a snapshot older than a write the request must see."""
    q = await stored_period(any_db, store_settings, 12, "hour")
    cache = StatsCache()
    answered, resume = asyncio.Event(), asyncio.Event()

    async def reads(work: Callable[[Reader], Awaitable[Any]]) -> Any:
        async def then_hold(conn: Reader) -> Any:
            found = await work(conn)
            answered.set()
            await resume.wait()  # the first request's read is out and answered, not returned
            return found

        return await any_db.read(then_hold if not answered.is_set() else work)

    first = asyncio.create_task(cache.compute(reads, q))
    await answered.wait()
    # Within 10 s: a second request sharing the first read would wait for it forever.
    second = await asyncio.wait_for(cache.compute(reads, q), 10)
    resume.set()
    assert await first == second == await fresh(any_db, q)
    assert (cache.tokens_read, cache.tokens_shared) == (2, 0)


async def test_when_the_shared_token_read_fails_the_others_read_their_own(
        any_db: Database, store_settings: Settings) -> None:
    q = await stored_period(any_db, store_settings, 13, "hour")
    cache = StatsCache()
    reads, gate, waiting, asked = gated_reads(any_db)

    async def failing_first(work: Callable[[Reader], Awaitable[Any]]) -> Any:
        if asked[0] == 0:
            await reads(work)  # queued, then the database is gone
            raise ConnectionError("the database went away")
        return await reads(work)

    first = asyncio.create_task(cache.compute(failing_first, q))
    others = [asyncio.create_task(cache.compute(failing_first, q)) for _ in range(2)]
    await waiting.wait()
    gate.set()
    with pytest.raises(ConnectionError):
        await first
    done = await asyncio.gather(*others)
    assert done[0] == done[1] == await fresh(any_db, q)
    # Neither got the failed read's None as a token: each read one, or shared the other's.
    assert cache.tokens_read >= 1 and cache.tokens_read + cache.tokens_shared == 2
