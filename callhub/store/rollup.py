"""The hourly rollup of calls behind /stats: one row per (pbx, line, UTC hour).

A month of hourly figures read from `calls` is tens of thousands of rows
counted per request (about 1 s at 20 clients on 1M calls); read from
`call_hours` it is a few thousand small rows. The writer keeps it in the
transaction that stores the calls (`plan` and `apply`, once per batch by
`store.save.save_calls`, which every write path takes: the writer's batches,
one-shot saves, CEL recovery and backfill), by recomputing the affected
buckets from `calls` rather than adding to them: a call stored again (a
replayed spool, a CEL record replaced by the AMI one) is counted once, as
it is in `calls`.

What the rows keep, per bucket, of the calls `stats.compute` counts (inbound
and outbound): counts by kind, the answered calls' hang-up counts and
ring/wait sums, the counts `resolution_stats` gives (calls by resolution,
their follow-ups by satisfaction), and the answered calls' rings, wait and
ring time:

- rings as cumulative counts, `rings_le[n]` (1-based) = answered calls that
  rang at most n times, up to the bucket's highest ring count (at most 100,
  the most `rings` or a line's target asks for; past the end every answered
  call is within). "Answered within N rings" and each line's own target are
  then plain sums in SQL (`within`), exact;
- wait and ring time as their binned values, comma-separated (`3,4,7,3`:
  a page of numbers per hour, sorted within each batch's part, in no order
  across them, as PostgreSQL's string_agg and SQLite's group_concat join
  them per group; Python reads, sorts and bisects them at C speed):
- wait, by whole seconds rounded up, so "answered within T seconds" is exact
  for a whole T (`wait <= T` exactly when `ceil(wait) <= T`); other T fall
  back to the exact query;
- ring time, in tenths of a second rounded up; the p90 is the upper edge of
  the bin holding the nearest-rank value, so it reads at most 0.1 s high and
  never low (tests/test_store_rollup.py holds it to that against the exact
  query).

Sums are added per hour and then per group (and a bucket's in the order its
calls were stored), so means may differ from the exact query's in the last
rounded digit. A batch's new calls are added to their buckets: on
PostgreSQL by one statement that adds each to its stored row (counts and
sums added, bins appended), on SQLite by reading, merging and writing back
the hour's few rows, whatever the number of calls in it. A batch's calls
that were stored before are recomputed instead, from `calls`, in the hour
they arrive in and the hour they were stored in (a CEL record replaced by
its AMI one may have moved); so, with their new calls, are those hours.
Setting a call's resolution or a follow-up's satisfaction recomputes the
call's hour (`refresh_hours`) in its transaction.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from callhub.records import CallRecord
from callhub.store.bulk import driver
from callhub.store.chunks import chunks, in_chunk
from callhub.store.tables import (
    RESOLUTION_COUNTS,
    RESOLUTIONS,
    ROLLUP_COUNTS,
    SATISFACTIONS,
    call_hours,
    calls,
    followups,
)

HOUR = 3600
RINGS_CAP = 101  # rings above 100 share a bin (StatsQuery.rings is at most 100)
RINGS_ASKED = 100  # the most rings a query or a line's target asks about
WAIT_CAP = 86401  # waits above a day share a bin (StatsQuery.seconds is at most 86400)
RING_BINS_PER_SECOND = 10
P90_ERROR_SECONDS = 1 / RING_BINS_PER_SECOND  # the p90 reads at most this much high
LOCK_KEY = 0x63616C6C68  # PostgreSQL advisory lock: one rollup writer at a time
FILL_CHUNK_HOURS = 24 * 31


class Joined(FunctionElement[str]):
    """The group's non-empty texts joined by ',' (string_agg / group_concat)."""

    type = sa.Text()
    inherit_cache = True


@compiles(Joined, "postgresql")
def _joined_pg(element: Joined, compiler: SQLCompiler, **kw: Any) -> str:
    return f"string_agg(nullif({compiler.process(element.clauses, **kw)}, ''), ',')"


@compiles(Joined, "sqlite")
def _joined_sqlite(element: Joined, compiler: SQLCompiler, **kw: Any) -> str:
    return f"group_concat(nullif({compiler.process(element.clauses, **kw)}, ''), ',')"


class _Element(FunctionElement[int]):
    """`rings_le[n]`: element n (1-based) of a bucket's cumulative ring counts, NULL past
    its end (a PostgreSQL integer array; JSON text on SQLite)."""

    type = sa.Integer()
    inherit_cache = True


@compiles(_Element, "postgresql")
def _element_pg(element: _Element, compiler: SQLCompiler, **kw: Any) -> str:
    column, index = (compiler.process(c, **kw) for c in element.clauses)
    return f"({column})[{index}]"


@compiles(_Element, "sqlite")
def _element_sqlite(element: _Element, compiler: SQLCompiler, **kw: Any) -> str:
    column, index = (compiler.process(c, **kw) for c in element.clauses)
    return f"json_extract({column}, '$[' || (({index}) - 1) || ']')"


def within(rings: sa.ColumnElement[int] | int) -> sa.ColumnElement[int]:
    """A bucket's answered calls that rang at most `rings` times (1 to 100; an SQL
    expression such as a CASE over the line, or a number)."""
    h = call_hours.c
    index = rings if isinstance(rings, sa.ColumnElement) else sa.literal(rings, sa.Integer)
    return sa.func.coalesce(_Element(h.rings_le, index), h.answered)


# Each call's follow-ups' satisfactions, joined (one index probe per call).
_SATISFACTIONS = sa.select(Joined(followups.c.satisfaction)).where(
    followups.c.call_id == calls.c.id, followups.c.satisfaction.is_not(None)
).scalar_subquery()

_SOURCE = sa.select(
    calls.c.pbx, calls.c.line, calls.c.arrived_at, calls.c.direction, calls.c.outcome,
    calls.c.short_abandon, calls.c.rings, calls.c.ring_seconds, calls.c.wait_seconds,
    calls.c.hangup_by, calls.c.resolution, _SATISFACTIONS,
).where(calls.c.direction.in_(("inbound", "outbound")),
        calls.c.arrived_at >= sa.bindparam("lo", type_=calls.c.arrived_at.type),
        calls.c.arrived_at < sa.bindparam("hi", type_=calls.c.arrived_at.type))
_SOURCE_PBX = _SOURCE.where(calls.c.pbx == sa.bindparam("pbx", type_=calls.c.pbx.type))


def hour_of(at: datetime) -> int:
    """The UTC hour number (POSIX seconds // 3600) of an aware time."""
    return math.floor(at.timestamp()) // HOUR


def _at(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * HOUR, UTC)


@dataclass(slots=True)
class Bucket:
    """One (pbx, line, hour)'s counts, sums and binned values."""

    outbound: int = 0
    short_abandons: int = 0
    answered: int = 0
    abandoned: int = 0
    missed: int = 0
    other_inbound: int = 0
    hangup_known: int = 0
    agent_hung_up_first: int = 0
    ring_sum: float = 0.0
    wait_sum: float = 0.0
    rings: list[int] = field(default_factory=list)
    wait: list[int] = field(default_factory=list)
    ring: list[int] = field(default_factory=list)
    resolutions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESOLUTIONS, 0))
    satisfactions: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(SATISFACTIONS, 0))

    def add(self, direction: str, outcome: str, short_abandon: bool, rings: int,
            ring_seconds: float, wait_seconds: float, hangup_by: str | None,
            resolution: str | None = None, satisfactions: str | None = None) -> None:
        """Count one call as stats.compute and resolution_stats classify it
        (`satisfactions`: its follow-ups' answers, comma-separated)."""
        if resolution in self.resolutions:
            self.resolutions[resolution] += 1
        for answer in (satisfactions or "").split(","):
            if answer in self.satisfactions:
                self.satisfactions[answer] += 1
        if direction == "outbound":
            self.outbound += 1
        elif short_abandon and outcome == "abandoned":
            self.short_abandons += 1
        elif outcome == "abandoned":
            self.abandoned += 1
        elif outcome == "missed":
            self.missed += 1
        elif outcome != "answered":
            self.other_inbound += 1
        else:
            self.answered += 1
            if hangup_by is not None:
                self.hangup_known += 1
                self.agent_hung_up_first += hangup_by == "agent"
            self.ring_sum += ring_seconds
            self.wait_sum += wait_seconds
            self.rings.append(min(rings, RINGS_CAP))
            self.wait.append(max(min(math.ceil(wait_seconds), WAIT_CAP), 0))
            self.ring.append(ring_bin(ring_seconds))


def cumulative(rings: list[int]) -> list[int]:
    """`rings_le`: element n-1 = how many of `rings` are at most n, for n from 1 to the
    highest of them (at most RINGS_ASKED)."""
    if not rings:
        return []
    top = min(max(rings), RINGS_ASKED)
    counts = [0] * (top + 1)
    for value in rings:
        if value <= top:
            counts[value] += 1
    out, running = [], counts[0]  # calls answered before a full ring count in every n
    for n in range(1, top + 1):
        running += counts[n]
        out.append(running)
    return out


def ring_bin(ring_seconds: float) -> int:
    return max(math.ceil(ring_seconds * RING_BINS_PER_SECOND), 0)


def aggregate(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, str | None, int], Bucket]:
    """Rows of `_SOURCE` into buckets by (pbx, line, hour)."""
    buckets: dict[tuple[str, str | None, int], Bucket] = {}
    for (pbx, line, arrived_at, direction, outcome, short_abandon, rings, ring_seconds,
         wait_seconds, hangup_by, resolution, satisfactions) in rows:
        key = (pbx, line, hour_of(arrived_at))
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = Bucket()
        bucket.add(direction, outcome, bool(short_abandon), rings, ring_seconds, wait_seconds,
                   hangup_by, resolution, satisfactions)
    return buckets


def spelled(values: list[int]) -> str:
    """Binned values as a batch writes them: sorted, comma-separated ('' for none; later
    batches append theirs, see `_add`). orjson writes the list ~10x faster than
    `",".join(map(str, ...))` (an hour's few thousand values, twice for every hour a
    batch touches: 8 % of the writer's thread before)."""
    return orjson.dumps(sorted(values))[1:-1].decode()


def table_rows(buckets: dict[tuple[str, str | None, int], Bucket], now: datetime
               ) -> list[dict[str, Any]]:
    return [{"pbx": pbx, "line": line, "hour": hour, "outbound": b.outbound,
             "short_abandons": b.short_abandons, "answered": b.answered,
             "abandoned": b.abandoned, "missed": b.missed, "other_inbound": b.other_inbound,
             "hangup_known": b.hangup_known, "agent_hung_up_first": b.agent_hung_up_first,
             "ring_sum": b.ring_sum, "wait_sum": b.wait_sum, "rings_le": cumulative(b.rings),
             "wait_bins": spelled(b.wait), "ring_bins": spelled(b.ring),
             **{RESOLUTION_COUNTS[name]: n for name, n in b.resolutions.items()},
             **b.satisfactions, "changed_at": now}
            for (pbx, line, hour), b in buckets.items()]


def hour_ranges(keys: Iterable[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """(pbx, first hour, end hour) runs of consecutive hours covering the keys' hours."""
    hours: dict[str, set[int]] = {}
    for pbx, hour in keys:
        hours.setdefault(pbx, set()).add(hour)
    out: list[tuple[str, int, int]] = []
    for pbx in sorted(hours):
        ordered = sorted(hours[pbx])
        lo = prev = ordered[0]
        for hour in ordered[1:]:
            if hour != prev + 1:
                out.append((pbx, lo, prev + 1))
                lo = hour
            prev = hour
        out.append((pbx, lo, prev + 1))
    return out


def _delete(pbx: str, lo: int, hi: int) -> sa.Delete:
    return sa.delete(call_hours).where(call_hours.c.pbx == pbx, call_hours.c.hour >= lo,
                                       call_hours.c.hour < hi)


@dataclass(frozen=True, slots=True)
class Plan:
    """What `apply` does to the buckets, decided without the database (`plan`)."""

    recomputed: set[tuple[str, int]]  # (pbx, UTC hour)s recomputed from `calls`
    new_calls: dict[tuple[str, str | None, int], Bucket]  # added to their buckets


def plan(records: Sequence[CallRecord], restored: Collection[tuple[str, str]] = (),
         stored_hours: Iterable[tuple[str, int]] = ()) -> Plan:
    """How to bring the buckets of the just-stored `records` up to date: those of the
    calls `restored` ((pbx, linkedid)s that were stored before the batch) and of
    `stored_hours` (the (pbx, UTC hour)s they were stored in) recomputed from `calls`,
    the new calls added to theirs. Python only: the writer makes it while PostgreSQL
    merges the calls."""
    recomputed = {(r.pbx, _hour(r)) for r in records if (r.pbx, r.linkedid) in restored}
    recomputed.update(stored_hours)
    added = [r for r in records
             if (r.pbx, r.linkedid) not in restored and (r.pbx, _hour(r)) not in recomputed]
    return Plan(recomputed, aggregate(_source_rows(added)))


async def apply(conn: AsyncConnection, planned: Plan,
                also_changed: Iterable[tuple[str, int]] = ()) -> None:
    """The buckets brought up to date as `plan` decided; the (pbx, hour)s `also_changed`
    (worklist entries counted there changed) marked as changed.

    Call it in the transaction that stored the calls, after they are written. On
    PostgreSQL it first takes a transaction-level advisory lock, so two
    writers (the daemon and a backfill) cannot each recompute an hour without
    the other's calls, nor add to a bucket another is rewriting.
    """
    await refresh_hours(conn, planned.recomputed, also_changed, new_calls=planned.new_calls)


def _hour(record: CallRecord) -> int:
    return math.floor(record.arrived_at) // HOUR


def _source_rows(records: Iterable[CallRecord]) -> list[tuple[Any, ...]]:
    """New calls as the rows `_SOURCE` reads of them: what `calls` holds for them now (a
    call just stored has no resolution and no follow-up yet)."""
    return [(r.pbx, r.line, datetime.fromtimestamp(r.arrived_at, UTC), r.direction, r.outcome,
             r.short_abandon, r.rings, r.ring_seconds, r.wait_seconds, r.hangup_by, None, None)
            for r in records if r.direction in ("inbound", "outbound")]


async def refresh_call(conn: AsyncConnection, call_id: int) -> None:
    """Recompute the bucket of one stored call (its resolution or a follow-up's
    satisfaction changed), in the transaction that changed it."""
    found = (await conn.execute(sa.select(calls.c.pbx, calls.c.arrived_at)
                                .where(calls.c.id == call_id))).first()
    if found is not None:
        await refresh_hours(conn, [(found.pbx, hour_of(found.arrived_at))])


async def touch(conn: AsyncConnection, keys: Iterable[tuple[str, int]]) -> None:
    """Mark the buckets of these (pbx, UTC hour)s changed without recomputing them: what
    /stats counts there from elsewhere (the worklist's entries) changed, and the stats
    cache (callhub/store/stats_cache.py) watches `changed_at`."""
    await refresh_hours(conn, (), keys)


async def _locked_now(conn: AsyncConnection) -> datetime:
    """The time to stamp changed buckets with, under the rollup's lock on PostgreSQL: the
    database's clock, read under the lock, only grows, however the writers' hosts' clocks
    differ (the stats cache relies on it)."""
    if conn.dialect.name != "postgresql":
        return datetime.now(UTC)
    now: datetime = (await conn.execute(_LOCKED_NOW, {"key": LOCK_KEY})).scalar_one()
    return now


_LOCKED_NOW = sa.text(
    "SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock(:key)) AS locked")


async def refresh_hours(conn: AsyncConnection, keys: Iterable[tuple[str, int]],
                        also_changed: Iterable[tuple[str, int]] = (),
                        new_calls: dict[tuple[str, str | None, int], Bucket] | None = None
                        ) -> None:
    """Recompute the buckets of these (pbx, UTC hour)s; add the buckets of new calls
    `new_calls` (in none of those hours) to theirs; stamp those of `also_changed` that
    this does not rewrite as changed."""
    ranges = hour_ranges(keys)
    recomputed = {(pbx, hour) for pbx, lo, hi in ranges for hour in range(lo, hi)}
    new_calls = new_calls or {}
    rewritten = recomputed | {(pbx, hour) for pbx, _line, hour in new_calls}
    stamped = sorted(set(also_changed) - rewritten)
    if not ranges and not stamped and not new_calls:
        return
    pg = conn.dialect.name == "postgresql"
    now = await _locked_now(conn)
    for part in chunks(stamped, in_chunk(conn, lists=2)):
        await conn.execute(sa.update(call_hours).where(_in_hours(part)).values(changed_at=now))
    for pbx, lo, hi in ranges:
        params = {"pbx": pbx, "lo": _at(lo), "hi": _at(hi)}
        if pg:  # the old buckets deleted by the statement that reads their calls
            gone = _delete(pbx, lo, hi).returning(call_hours.c.hour).cte("gone")
            rows = (await conn.execute(_SOURCE_PBX.add_cte(gone), params)).all()
        else:
            rows = (await conn.execute(_SOURCE_PBX, params)).all()
            await conn.execute(_delete(pbx, lo, hi))
        out = table_rows(aggregate(rows), now)
        if out:
            await conn.execute(sa.insert(call_hours), out)
    if new_calls:
        await _add(conn, table_rows(new_calls, now), now, pg)


def _in_hours(keys: Sequence[tuple[str, int]]) -> sa.ColumnElement[bool]:
    """The rows of these (pbx, UTC hour)s: one statement for every PBX of a batch (a
    statement each cost a wait for the event loop each, a second a batch at 100 busy
    PBXs)."""
    return sa.tuple_(call_hours.c.pbx, call_hours.c.hour).in_(keys)


async def _add(conn: AsyncConnection, additions: list[dict[str, Any]], now: datetime,
               pg: bool) -> None:
    """Add buckets of new calls (`table_rows`) to the stored ones.

    PostgreSQL adds them in one statement (`_ADD_PG`): a batch's bucket rows as one
    array a column, each added to its stored row by an UPDATE, inserted where none
    is. Before, the touched hours' rows came back whole (their bins, thousands of
    values an hour), were merged in Python and inserted again: about half of the
    writer thread's CPU in the fleet bench, where a batch touches 100 PBXs' hours
    (bench/README.md). The advisory lock taken before (`_locked_now`) keeps another
    writer from inserting the same bucket meanwhile. SQLite reads, merges and writes
    them back (`merged`).
    """
    if pg:
        driver_conn = await driver(conn)
        await driver_conn.execute(_ADD_PG, *_columns(additions), now)
        return
    keys = sorted({(row["pbx"], row["hour"]) for row in additions})
    kept: dict[tuple[str, str | None, int], dict[str, Any]] = {}
    for part in chunks(keys, in_chunk(conn, lists=2)):
        stored = (await conn.execute(sa.select(call_hours).where(_in_hours(part)))
                  ).mappings().all()
        await conn.execute(sa.delete(call_hours).where(_in_hours(part)))
        kept.update({(row["pbx"], row["line"], row["hour"]): {**row, "changed_at": now}
                     for row in stored})
    for row in additions:
        key = (row["pbx"], row["line"], row["hour"])
        kept[key] = merged(kept[key], row) if key in kept else row
    await conn.execute(sa.insert(call_hours), list(kept.values()))


_SUMMED = ("outbound", "short_abandons", "answered", "abandoned", "missed", "other_inbound",
           "hangup_known", "agent_hung_up_first", "ring_sum", "wait_sum", *ROLLUP_COUNTS)
_BINS = ("wait_bins", "ring_bins")
_MERGED = tuple(c.name for c in call_hours.c if c.name != "changed_at")
# How each column's values travel in `_ADD_PG`'s arrays (`rings_le` as its array's text:
# the lists differ in length, and a PostgreSQL array of arrays cannot).
_ARRAY_TYPES = {"pbx": "text", "line": "text", "hour": "int8", "ring_sum": "float8",
                "wait_sum": "float8", "rings_le": "text", "wait_bins": "text",
                "ring_bins": "text"}


def _columns(additions: list[dict[str, Any]]) -> list[list[Any]]:
    """`_ADD_PG`'s arrays: each of `_MERGED`'s columns' values over the rows."""
    out = [[row[name] for row in additions] for name in _MERGED]
    rings = _MERGED.index("rings_le")
    out[rings] = ["{" + ",".join(map(str, value)) + "}" for value in out[rings]]
    return out


def _same_bucket(a: str, b: str) -> str:
    return f"{a}.hour = {b}.hour AND {a}.pbx = {b}.pbx AND {a}.line IS NOT DISTINCT FROM {b}.line"


# `merged` in SQL. Within an UPDATE's SET every column reads its old value, so the
# padding of `rings_le` past a bucket's end is the old row's `answered`, as in `merged`.
_ADD_PG = (
    "WITH batch AS (SELECT "
    + ", ".join("rings_le::integer[] AS rings_le" if name == "rings_le" else name
                for name in _MERGED)
    + " FROM unnest("
    + ", ".join(f"${n}::{_ARRAY_TYPES.get(name, 'int4')}[]"
                for n, name in enumerate(_MERGED, 1))
    + f") AS b({', '.join(_MERGED)})), "
    + "added AS (UPDATE call_hours AS h SET "
    + ", ".join(f"{name} = h.{name} + b.{name}" for name in _SUMMED)
    + ", rings_le = ARRAY(SELECT coalesce(h.rings_le[i], h.answered)"
      " + coalesce(b.rings_le[i], b.answered) FROM generate_series(1, "
      "greatest(cardinality(h.rings_le), cardinality(b.rings_le))) AS i ORDER BY i), "
    + ", ".join(f"{name} = concat_ws(',', nullif(h.{name}, ''), nullif(b.{name}, ''))"
                for name in _BINS)
    + f", changed_at = ${len(_MERGED) + 1} FROM batch AS b WHERE {_same_bucket('h', 'b')}"
    + " RETURNING h.hour, h.pbx, h.line) "
    + f"INSERT INTO call_hours ({', '.join(_MERGED)}, changed_at) "
    + f"SELECT {', '.join(_MERGED)}, ${len(_MERGED) + 1} FROM batch AS b "
    + f"WHERE NOT EXISTS (SELECT FROM added AS a WHERE {_same_bucket('a', 'b')})")


def merged(row: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Two rows of one bucket (`table_rows`, or as stored) as one: the row `aggregate`
    would make of both rows' calls (its sums added in another order, its bins in
    another order)."""
    out = {**row, **{name: row[name] + more[name] for name in _SUMMED},
           "changed_at": more["changed_at"]}
    a, b = list(row["rings_le"]), list(more["rings_le"])
    # Past a bucket's end every answered call of it is within (see `cumulative`).
    out["rings_le"] = [(a[n] if n < len(a) else row["answered"])
                       + (b[n] if n < len(b) else more["answered"])
                       for n in range(max(len(a), len(b)))]
    for name in _BINS:
        out[name] = ",".join(text for text in (row[name], more[name]) if text)
    return out


def rebuild_sync(connection: Connection) -> int:
    """Recompute the whole rollup from `calls` (the migration, a bulk load); its rows."""
    first, last = connection.execute(
        sa.select(sa.func.min(calls.c.arrived_at), sa.func.max(calls.c.arrived_at))).one()
    connection.execute(sa.delete(call_hours))
    if first is None or last is None:
        return 0
    lo, end = hour_of(utc_value(first)), hour_of(utc_value(last)) + 1
    now = datetime.now(UTC)
    written = 0
    while lo < end:
        hi = min(lo + FILL_CHUNK_HOURS, end)
        rows = connection.execute(_SOURCE, {"lo": _at(lo), "hi": _at(hi)}).all()
        out = table_rows(aggregate(rows), now)
        if out:
            connection.execute(sa.insert(call_hours), out)
        written += len(out)
        lo = hi
    return written


def utc_value(value: datetime) -> datetime:
    """An aggregate's timestamp (naive UTC from SQLite's min/max) as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def rebuild(conn: AsyncConnection) -> int:
    """`rebuild_sync` on an async connection (bench/api.py after its COPY; no command
    offers it yet)."""
    return await conn.run_sync(rebuild_sync)


# -- reading -----------------------------------------------------------------------------------

def values(joined: str | None) -> list[int]:
    """The binned values of a group (its buckets' joined by ','), sorted."""
    if not joined:
        return []
    out: list[int] = orjson.loads("[" + joined + "]")
    out.sort()
    return out


def p90_ring_counted(ring_bins: Counter[int], rank: int) -> float | None:
    """`p90_ring` of binned values given as how many of each (the period's total: a month
    is tens of thousands of values, counted faster than sorted)."""
    seen = 0
    for value in sorted(ring_bins):
        seen += ring_bins[value]
        if seen >= rank:
            return value / RING_BINS_PER_SECOND
    return None


def p90_ring(ring_bins: list[int], rank: int) -> float | None:
    """The upper edge (seconds) of the ring-time bin holding the value of `rank` (1-based)
    among the sorted `ring_bins`."""
    if not ring_bins:
        return None
    return ring_bins[rank - 1] / RING_BINS_PER_SECOND
