"""The hourly rollup behind /stats (callhub/store/rollup.py) against the exact query.

The calls of tests/test_store_stats.py (twelve days across Berlin's DST change,
two PBXs, calls on hour boundaries, short abandons) are stored through
`save_calls`, which keeps the rollup; every figure read from the rollup must
be the exact query's (the means to their last rounded digit), but the p90
ring time, which may read up to rollup.P90_ERROR_SECONDS high and never low.
Storing calls again (a replay, a CEL record replaced by its AMI one that
moved to another hour and line) must leave the rollup as a rebuild from
`calls` would have it; so must the migration that fills it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from store_fixtures import T0, make_call, store
from test_store_stats import DAYS, START, random_calls

from callhub.config import Settings
from callhub.store import followups, migrate, resolution, resolution_stats, rollup, stats
from callhub.store.db import Database
from callhub.store.errors import NotApplicable
from callhub.store.save import save_calls
from callhub.store.tables import call_hours, calls


def close(got: dict[str, Any], exact: dict[str, Any]) -> None:
    """The rollup's figures against the exact query's, within the documented error."""
    assert got.keys() == exact.keys()
    for name, value in exact.items():
        if name == "p90_ring_seconds" and value is not None:
            assert 0 <= got[name] - value <= rollup.P90_ERROR_SECONDS + 1e-9, name
        elif name.startswith("avg_") and value is not None:
            assert got[name] == pytest.approx(value, abs=1.01e-3), name
        else:
            assert got[name] == value, name


async def compare(db: Database, q: stats.StatsQuery) -> dict[str, Any]:
    async with db.connection() as conn:
        exact = await stats.compute(conn, q)
        got = await stats.compute(conn, replace(q, rollup=True))
    close(got["totals"], exact["totals"])
    assert [g["key"] for g in got.get("groups", [])] == [g["key"] for g in
                                                          exact.get("groups", [])]
    for g, e in zip(got.get("groups", []), exact.get("groups", []), strict=True):
        close(g, e)
    assert got["line_targets"] == exact["line_targets"]  # each line against its own target
    async with db.connection() as conn:  # the resolution and satisfaction counts: exact
        assert await resolution_stats.compute(conn, replace(q, rollup=True)) == \
            await resolution_stats.compute(conn, q)
    return got


async def judge(db: Database, seed: int) -> int:
    """Resolutions and follow-ups' satisfactions on some stored calls, set as the API sets
    them (each in its own transaction); how many calls got one."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    async with db.connection() as conn:
        ids = list((await conn.execute(sa.select(calls.c.id).order_by(calls.c.id))).scalars())
    judged = 0
    for call_id in rng.sample(ids, len(ids) // 3):
        async with db.begin() as conn:
            verdict = rng.choice(resolution.RESOLUTIONS)
            await resolution.set_resolution(conn, call_id, verdict,
                                            "维修部" if verdict == "referred" else None,
                                            now=now, who="test")
            judged += 1
            for _ in range(rng.randrange(3)):
                try:
                    (fid,) = await followups.create(conn, call_id, [now], now=now)
                except NotApplicable:  # no outside number
                    break
                await followups.close(conn, fid, "done", now=now,
                                      satisfaction=rng.choice(resolution.SATISFACTIONS))
    return judged


def plain(column: str, value: Any) -> Any:
    """A rollup value as compared: sums to 9 decimals, bins sorted (both added batch by
    batch, in another order than a rebuild adds them)."""
    if column in ("wait_bins", "ring_bins"):
        return rollup.values(value)
    return round(value, 9) if isinstance(value, float) else value


async def snapshot(db: Database) -> list[tuple[Any, ...]]:
    """The rollup's rows, as compared (`plain`)."""
    columns = [c for c in call_hours.c if c.name != "changed_at"]
    async with db.connection() as conn:
        rows = (await conn.execute(sa.select(*columns))).all()
    return sorted((tuple(plain(c.name, v) for c, v in zip(columns, r, strict=True))
                   for r in rows), key=repr)


async def rebuilt(db: Database) -> list[tuple[Any, ...]]:
    async with db.begin() as conn:
        await rollup.rebuild(conn)
    return await snapshot(db)


@pytest.mark.parametrize("zone", ["Europe/Berlin", "Asia/Shanghai"])
async def test_rollup_figures_are_the_exact_figures(
        any_db: Database, store_settings: Settings, zone: str) -> None:
    records = random_calls(seed=len(zone))
    await store(any_db, store_settings, *records)
    assert await judge(any_db, seed=len(zone)) > 50
    tz = ZoneInfo(zone)
    whole = stats.StatsQuery(start=START, end=START + timedelta(days=DAYS), tz=tz)
    queries = [replace(whole, group_by=g) for g in (None, "hour", "day", "line")]
    queries += [replace(whole, group_by="hour", rings=1, seconds=9, pbx="main"),
                replace(whole, group_by="line", exclude_short_abandons=False, rings=100,
                        seconds=86400),
                replace(whole, group_by="day", pbx="branch", seconds=0)]
    for q in queries:
        assert stats.rollup_answers(q, stats.offset_pieces(q.start, q.end, q.tz)), q
        got = await compare(any_db, q)
        assert got["totals"]["answered"] > 0
    for g in (None, "hour", "line"):  # a period without calls
        await compare(any_db, replace(whole, start=START - timedelta(days=9),
                                      end=START - timedelta(days=8), group_by=g))
    # Berlin's autumn change: the hour 02:00 twice, with its two offsets.
    if zone == "Europe/Berlin":
        async with any_db.connection() as conn:
            hours = await stats.compute(conn, replace(whole, group_by="hour", rollup=True))
        keys = [g["key"] for g in hours["groups"]]
        assert {"2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"} <= set(keys)


async def test_what_the_rollup_cannot_answer_takes_the_exact_query(
        any_db: Database, store_settings: Settings) -> None:
    records = random_calls(seed=3)
    await store(any_db, store_settings, *records)
    berlin, kathmandu = ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Kathmandu")
    whole = stats.StatsQuery(start=START, end=START + timedelta(days=DAYS), tz=berlin)
    fallbacks = [replace(whole, group_by="agent"),
                 replace(whole, seconds=9.9),
                 replace(whole, start=datetime(2026, 10, 22, 7, 30, tzinfo=berlin)),
                 replace(whole, tz=kathmandu, group_by="hour"),
                 replace(whole, tz=kathmandu, group_by="day")]
    for q in fallbacks:
        assert not stats.rollup_answers(q, stats.offset_pieces(q.start, q.end, q.tz)), q
        async with any_db.connection() as conn:
            assert await stats.compute(conn, replace(q, rollup=True)) == \
                await stats.compute(conn, q)
    # Kathmandu (+05:45) without hours or days: whole UTC hours still answer it.
    q = replace(whole, tz=kathmandu, group_by="line")
    assert stats.rollup_answers(q, stats.offset_pieces(q.start, q.end, q.tz))
    await compare(any_db, q)


async def test_calls_stored_again_are_counted_once(
        any_db: Database, store_settings: Settings) -> None:
    records = random_calls(seed=11)
    await store(any_db, store_settings, *records)
    await judge(any_db, seed=11)  # kept when their calls are stored again
    first = await snapshot(any_db)
    assert first and first == await rebuilt(any_db)

    # A replay of part of the stream (a spool after a crash) changes nothing.
    await store(any_db, store_settings, *records[40:120])
    assert await snapshot(any_db) == first

    # A call rebuilt from CEL, then its AMI record: another outcome, line, and hour.
    at = START.timestamp() + 5 * 86400 + 3599.5
    cel = make_call("moved", at=at, source="cel", outcome="missed", line="hotline",
                    reason="not_answered")
    await store(any_db, store_settings, cel)
    ami = make_call("moved", at=at + 1.0, outcome="answered", line="repairs",
                    ring_seconds=4.2, rings=1, wait_seconds=5.0)
    await store(any_db, store_settings, ami)
    after = await snapshot(any_db)
    assert after != first
    assert after == await rebuilt(any_db)
    q = stats.StatsQuery(start=START, end=START + timedelta(days=DAYS), tz=UTC,
                         group_by="hour")
    got = await compare(any_db, q)
    moved = datetime.fromtimestamp(at + 1.0, UTC).replace(minute=0, second=0, microsecond=0)
    block = next(g for g in got["groups"] if g["key"] == moved.isoformat())
    assert block["answered"] >= 1

    # Stored again three hours later (a clock fixed between a CEL record and its AMI
    # one): its old hour no longer counts it.
    later = replace(ami, arrived_at=ami.arrived_at + 3 * 3600)
    await store(any_db, store_settings, later)
    assert await snapshot(any_db) == await rebuilt(any_db)


async def test_calls_stored_batch_by_batch_are_added_to_their_buckets(
        any_db: Database, store_settings: Settings) -> None:
    """New calls are added to the buckets their hour holds, not recomputed from `calls`:
    stored shuffled, in batches of 1 to 40, some with replays of calls stored before and
    some after resolutions and follow-ups were set, the rollup is what a rebuild makes
    and its figures are the exact query's."""
    rng = random.Random(23)
    records = random_calls(seed=23)
    rng.shuffle(records)
    done = 0
    judged = False
    while done < len(records):
        size = rng.randint(1, 40)
        batch = records[done:done + size]
        if done and rng.random() < 0.25:
            batch += rng.sample(records[:done], min(3, done))  # a replayed spool
        await store(any_db, store_settings, *batch)
        done += size
        if not judged and done > len(records) // 2:
            judged = await judge(any_db, seed=23) > 0
    assert judged
    assert await snapshot(any_db) == await rebuilt(any_db)
    whole = stats.StatsQuery(start=START, end=START + timedelta(days=DAYS),
                             tz=ZoneInfo("Asia/Shanghai"))
    for group_by in (None, "hour", "day", "line"):
        await compare(any_db, replace(whole, group_by=group_by))


async def test_a_second_writer_adds_to_the_buckets_of_the_first_once_it_commits(
        pg_db: Database, store_settings: Settings) -> None:
    """Two transactions storing new calls of the same hour at once (the daemon and a
    backfill): each adds its calls to the hour's stored buckets and inserts those it finds
    none of, which it cannot see while the other has not committed. The second waits on
    the rollup's lock until the first commits, so it adds to the first's buckets instead
    of inserting them again."""
    # Other callers and no agent: the worklist's lock on a number and the agents' row
    # would make the second wait as well, lock or not.
    first, second = ([make_call(f"{name}.{n}", at=T0 + 10 * i + n, agent=None,
                                caller_number=f"+86138{i:03d}{n:05d}") for n in range(3)]
                     for i, name in enumerate(("first", "second")))
    high, low = rollup.LOCK_KEY >> 32, rollup.LOCK_KEY & 0xFFFFFFFF

    async def waits_for_the_lock() -> bool:
        async with pg_db.connection() as conn:
            return bool(await conn.scalar(sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                f"AND classid = {high} AND objid = {low}")))

    async with pg_db.connection() as conn:
        await conn.begin()
        await save_calls(conn, first, store_settings)  # its buckets inserted, not committed
        later = asyncio.create_task(store(pg_db, store_settings, *second))
        deadline = time.monotonic() + 30
        while not await waits_for_the_lock():  # the second batch queues behind the first
            assert time.monotonic() < deadline and not later.done()
        await conn.commit()
    await asyncio.wait_for(later, 30)
    rows = await snapshot(pg_db)
    assert len({row[:3] for row in rows}) == len(rows)  # (pbx, line, hour): one row each
    assert rows == await rebuilt(pg_db)
    assert sum(row[5] for row in rows) == len(first) + len(second)  # answered


async def test_the_migration_fills_the_rollup_for_stored_calls(
        any_db: Database, store_settings: Settings) -> None:
    await store(any_db, store_settings, *random_calls(seed=5))
    kept = await snapshot(any_db)
    assert kept
    await migrate.downgrade(any_db, "0010_hourly_rollup-1")
    await migrate.upgrade(any_db)
    assert await snapshot(any_db) == kept


def test_hour_ranges_are_runs_of_the_hours_asked() -> None:
    assert rollup.hour_ranges([("a", 10), ("a", 11), ("a", 13), ("a", 10), ("b", 5)]) == [
        ("a", 10, 12), ("a", 13, 14), ("b", 5, 6)]
    assert rollup.hour_ranges([]) == []
