"""Desk figures over a period, as DESIGN.md defines them, optionally grouped.

The database does the counting: one grouped query for the calls' counts and
sums, one for the worklist's; Python only adds, divides, rounds and names the
groups. A month of a busy desk is tens of thousands of calls, which is why
they are not read into Python one by one. The percentiles (p90 ring time by
nearest rank, median time to callback) come from percentile_disc on
PostgreSQL and from ranking window functions on SQLite; the figures are the
same on both (tests/test_store_stats.py holds both to a row-by-row reference).

Hours and days are local to `StatsQuery.tz`. Neither SQLite nor a portable SQL
knows time zones, so the period is cut where the zone's UTC offset changes
(DST) and each row's local bucket is `(epoch + offset) // 3600` (or 86400)
with the offset of its piece: exact for any zone, DST and 45-minute offsets
included. Short abandons are left out of every figure but their own count
when `exclude_short_abandons` is set.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from callhub.config.targets import LineTargets, TargetTally, tally_rings
from callhub.store import fetch, rollup
from callhub.store.read_pool import Reader
from callhub.store.tables import call_hours, calls, worklist_entries

# What each figure of a stats block means (the API documents it, the report orders by it).
FIGURES_DOC = {
    "inbound": "Inbound calls (short abandons left out when configured so).",
    "outbound": "Outbound calls.",
    "answered": "Inbound calls an agent answered.",
    "abandoned": "The caller hung up before an agent answered.",
    "short_abandons": "Abandoned within the short-abandon threshold (always counted here).",
    "missed": "Ended unanswered without the caller giving up.",
    "answer_rate": "answered / inbound.",
    "answered_within_rings": "Answered with rings <= N.",
    "within_rings_rate": "answered within N rings / inbound (unanswered count against it).",
    "within_rings_rate_answered": "answered within N rings / answered.",
    "answered_within_target": "Answered within the ring target of the call's own line "
                              "(its target_rings, [lines] in the config).",
    "within_target_rate": "answered within their line's target / inbound.",
    "answered_within_seconds": "Answered with the caller's wait <= T seconds.",
    "service_level": "answered within T seconds / inbound.",
    "service_level_answered": "answered within T seconds / answered.",
    "avg_ring_seconds": "Mean ring time of answered calls.",
    "p90_ring_seconds": "90th percentile (nearest rank) ring time of answered calls.",
    "avg_speed_of_answer_seconds": "Mean wait (arrival to answer) of answered calls.",
    "agent_hangup_first_rate": "Answered calls the agent hung up first / answered calls.",
    "pending_callbacks": "Worklist entries still pending whose first miss is in the period.",
    "handled_callbacks": "Worklist entries handled whose first miss is in the period.",
    "median_time_to_callback_seconds": "Median first miss to handling of those entries.",
}

GROUPS = ("hour", "day", "agent", "line")
T = TypeVar("T")

P90 = 90  # percent, nearest rank
# A call's kind in the grouped query (inbound kinds from SHORT on).
OUTBOUND, SHORT, ANSWERED, ABANDONED, MISSED, OTHER = range(6)
WORK_MEM = "32MB"  # PostgreSQL, for this transaction's sorts


@dataclass(slots=True)
class _Acc:
    """The figures' ingredients for one group (or the totals)."""

    inbound: int = 0
    outbound: int = 0
    answered: int = 0
    abandoned: int = 0
    short_abandons: int = 0
    missed: int = 0
    within_rings: int = 0
    within_target: int = 0
    within_seconds: int = 0
    hangup_known: int = 0
    agent_hung_up_first: int = 0
    ring_sum: float = 0.0
    wait_sum: float = 0.0
    p90_ring: float | None = None
    pending_callbacks: int = 0
    handled_callbacks: int = 0
    median_middle: list[float] = field(default_factory=list)  # the 1 or 2 middle values

    def add(self, other: _Acc) -> None:
        """Add another group's counts and sums (not its percentiles)."""
        self.inbound += other.inbound
        self.outbound += other.outbound
        self.answered += other.answered
        self.abandoned += other.abandoned
        self.short_abandons += other.short_abandons
        self.missed += other.missed
        self.within_rings += other.within_rings
        self.within_target += other.within_target
        self.within_seconds += other.within_seconds
        self.hangup_known += other.hangup_known
        self.agent_hung_up_first += other.agent_hung_up_first
        self.ring_sum += other.ring_sum
        self.wait_sum += other.wait_sum
        self.pending_callbacks += other.pending_callbacks
        self.handled_callbacks += other.handled_callbacks

    def figures(self) -> dict[str, Any]:
        return {
            "inbound": self.inbound,
            "outbound": self.outbound,
            "answered": self.answered,
            "abandoned": self.abandoned,
            "short_abandons": self.short_abandons,
            "missed": self.missed,
            "answer_rate": ratio(self.answered, self.inbound),
            "answered_within_rings": self.within_rings,
            "within_rings_rate": ratio(self.within_rings, self.inbound),
            "within_rings_rate_answered": ratio(self.within_rings, self.answered),
            "answered_within_target": self.within_target,
            "within_target_rate": ratio(self.within_target, self.inbound),
            "answered_within_seconds": self.within_seconds,
            "service_level": ratio(self.within_seconds, self.inbound),
            "service_level_answered": ratio(self.within_seconds, self.answered),
            "avg_ring_seconds": _mean(self.ring_sum, self.answered),
            "p90_ring_seconds": None if self.p90_ring is None else round(self.p90_ring, 3),
            "avg_speed_of_answer_seconds": _mean(self.wait_sum, self.answered),
            "agent_hangup_first_rate": ratio(self.agent_hung_up_first, self.hangup_known),
            "pending_callbacks": self.pending_callbacks,
            "handled_callbacks": self.handled_callbacks,
            "median_time_to_callback_seconds": (
                round(sum(self.median_middle) / len(self.median_middle), 3)
                if self.median_middle else None),
        }


@functools.lru_cache(maxsize=1 << 13)
def ratio(part: int, whole: int) -> float | None:
    """part / whole to 4 places. Kept (~1 MB at most): a month by hour rounds ~7,000
    ratios of an hour's counts, mostly the same few thousand, and round(x, 4) costs 3x
    a lookup."""
    return round(part / whole, 4) if whole else None



def _mean(total: float, count: int) -> float | None:
    return round(total / count, 3) if count else None


def nearest_rank(count: int, pct: int) -> int:
    """The 1-based rank of the `pct` percentile among `count` values (exact integers)."""
    return max(-(-count * pct // 100), 1)


def percentile(values: Iterable[float], pct: int) -> float | None:
    """Nearest-rank percentile (an observed value; p90 of 10 values is the 9th)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return round(ordered[nearest_rank(len(ordered), pct) - 1], 3)


@dataclass(frozen=True, slots=True)
class StatsQuery:
    start: datetime
    end: datetime
    group_by: str | None = None
    rings: int = 3
    seconds: float = 20.0
    exclude_short_abandons: bool = True
    tz: tzinfo | None = None  # None: the system's local time
    pbx: str | None = None
    # Each line's ring target (answered_within_target) and answer-rate target.
    targets: LineTargets = field(default_factory=LineTargets)
    # Read the calls' figures from the hourly rollup when it can answer (rollup_answers):
    # the API does; the p90 then reads up to 0.1 s high (callhub/store/rollup.py).
    rollup: bool = False


# -- local hours and days in SQL ------------------------------------------------------------

class _Epoch(FunctionElement[int]):
    """Whole POSIX seconds of a UTC timestamp column, floored."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(_Epoch, "postgresql")
def _epoch_pg(element: _Epoch, compiler: SQLCompiler, **kw: Any) -> str:
    # date_part is float8 (exact to the microsecond for these dates); EXTRACT is numeric
    # since PostgreSQL 14, and a third slower.
    column = compiler.process(element.clauses, **kw)
    return f"CAST(floor(date_part('epoch', {column})) AS BIGINT)"


@compiles(_Epoch, "sqlite")
def _epoch_sqlite(element: _Epoch, compiler: SQLCompiler, **kw: Any) -> str:
    # 'YYYY-MM-DD HH:MM:SS.ffffff' without its fraction: strftime would round .9999995 up.
    column = compiler.process(element.clauses, **kw)
    return f"CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER)"


def _offset(at: datetime, tz: tzinfo | None) -> int:
    delta = at.astimezone(tz).utcoffset()
    return 0 if delta is None else int(delta.total_seconds())


def offset_pieces(start: datetime, end: datetime, tz: tzinfo | None
                  ) -> list[tuple[datetime | None, int]]:
    """[(until, UTC offset in seconds)] covering [start, end); the last piece's until is None.

    The zone is probed every 6 hours and each change narrowed down to the
    second (zones change their offset at whole seconds, never twice in 6 hours).
    A month is 125 probes: kept for the periods asked last (the caller gets a copy).
    """
    return list(_offset_pieces(start, end, tz))


@functools.lru_cache(maxsize=256)
def _offset_pieces(start: datetime, end: datetime, tz: tzinfo | None
                   ) -> tuple[tuple[datetime | None, int], ...]:
    pieces: list[tuple[datetime | None, int]] = []
    lo, current = start, _offset(start, tz)
    last = end - timedelta(microseconds=1)
    while lo < last:
        probe = min(lo + timedelta(hours=6), last)
        if _offset(probe, tz) == current:
            lo = probe
            continue
        a, b = math.floor(lo.timestamp()), math.ceil(probe.timestamp())
        while b - a > 1:  # offset(a) == current != offset(b)
            mid = (a + b) // 2
            a, b = (mid, b) if _offset(datetime.fromtimestamp(mid, UTC), tz) == current \
                else (a, mid)
        lo = datetime.fromtimestamp(b, UTC)
        pieces.append((lo, current))
        current = _offset(lo, tz)
    pieces.append((None, current))
    return tuple(pieces)


def _local_seconds(column: Any, pieces: Sequence[tuple[datetime | None, int]]
                   ) -> tuple[sa.ColumnElement[int], sa.ColumnElement[int]]:
    """(local POSIX seconds of `column`, the UTC offset used) as SQL expressions."""
    if len(pieces) == 1:
        offset: sa.ColumnElement[int] = sa.literal(pieces[0][1], sa.Integer)
    else:
        offset = sa.case(*((column < until, sa.literal(off, sa.Integer))
                           for until, off in pieces[:-1]),
                         else_=sa.literal(pieces[-1][1], sa.Integer))
    return _Epoch(column) + offset, offset


def _key_columns(group_by: str | None, at: Any, agent: Any, line: Any,
                 pieces: Sequence[tuple[datetime | None, int]]) -> list[sa.ColumnElement[Any]]:
    """The group key as two SQL columns `k` and `koff` (the offset, for hours only)."""
    null = sa.null()
    if group_by in ("hour", "day"):
        local, offset = _local_seconds(at, pieces)
        size = 3600 if group_by == "hour" else 86400
        return [(local // size).label("k"),
                (offset if group_by == "hour" else sa.literal(0, sa.Integer)).label("koff")]
    if group_by == "agent":
        return [(agent if agent is not None else sa.cast(null, sa.String)).label("k"),
                sa.literal(0, sa.Integer).label("koff")]
    if group_by == "line":
        return [line.label("k"), sa.literal(0, sa.Integer).label("koff")]
    return [sa.literal(0, sa.Integer).label("k"), sa.literal(0, sa.Integer).label("koff")]


_EPOCH = datetime(1970, 1, 1)


@functools.lru_cache(maxsize=1 << 14)
def _hour_key(hour: int, offset: int) -> str:
    """A local hour's key: isoformat of the aware time, written as the naive one and its
    offset (half the cost). Kept: the figures and the resolution figures of a month each
    name its 744 hours, and a desk asks for the same months again."""
    return (_EPOCH + timedelta(hours=hour)).isoformat() + _offset_suffix(offset)


@functools.lru_cache(maxsize=64)
def _offset_suffix(offset: int) -> str:
    """How `isoformat` writes a UTC offset of `offset` seconds ("+08:00")."""
    return _EPOCH.replace(tzinfo=timezone(timedelta(seconds=offset))).isoformat()[19:]


def _group_key(q: StatsQuery, k: Any, koff: int) -> Any:
    """The API's key of a group from the SQL key columns."""
    if q.group_by == "hour":  # the local hour with the offset it had (twice 02:00 in autumn)
        return _hour_key(int(k), int(koff))
    if q.group_by == "day":
        return (date(1970, 1, 1) + timedelta(days=int(k))).isoformat()
    if q.group_by in ("agent", "line"):
        return k
    return None


# -- the queries -------------------------------------------------------------------------------
#
# Counts and sums are one grouped query on both databases. The percentiles are
# the one place the dialects differ: PostgreSQL takes them in the same pass
# with percentile_disc (and GROUPING SETS for the totals' own), SQLite, which
# has neither, with window functions that rank the rows. Both give exact ranks:
# PostgreSQL's percentile_disc takes rank ceil(p * n) in floating point; p a
# hair under 0.9 is ceil(9n / 10) for any n below 10^10, and a hair either side
# of 0.5 gives the one or two middle values a median averages.

_HAIR = 1e-12


def _nearest_rank(rank: Any, count: Any, pct: int) -> sa.ColumnElement[bool]:
    """rank is the nearest rank of `pct` among count rows: rank = ceil(count * pct / 100)."""
    return sa.and_(rank * 100 >= count * pct, (rank - 1) * 100 < count * pct)


def _middle(rank: Any, count: Any) -> sa.ColumnElement[bool]:
    """rank is one of the 1 or 2 middle ranks among count rows."""
    return sa.and_(rank * 2 >= count, rank * 2 <= count + 2)


def _ranked(base: sa.Subquery, value: Any, where: sa.ColumnElement[bool], grouped: bool,
            pick: Any) -> sa.Select[Any]:
    """Rows of `base` (where `where`) holding the pick (a percentile's rank) of `value`,
    per group and over all; columns k, koff, v, in_group, in_all. (SQLite's way.)"""
    part = [base.c.k, base.c.koff]
    ranked = sa.select(
        base.c.k, base.c.koff, value.label("v"),
        sa.func.row_number().over(partition_by=part, order_by=value).label("rn"),
        sa.func.count().over(partition_by=part).label("n"),
        *((sa.func.row_number().over(order_by=value).label("rn_all"),
           sa.func.count().over().label("n_all")) if grouped else ()),
    ).where(where).subquery("ranked")
    in_group = pick(ranked.c.rn, ranked.c.n)
    in_all = pick(ranked.c.rn_all, ranked.c.n_all) if grouped else in_group
    return sa.select(ranked.c.k, ranked.c.koff, ranked.c.v, in_group.label("in_group"),
                     in_all.label("in_all")).where(sa.or_(in_group, in_all))


def _disc(fraction: float, value: Any, where: sa.ColumnElement[bool]) -> Any:
    """PostgreSQL: the value at rank ceil(fraction * n) of the rows `where`, per group."""
    return sa.func.percentile_disc(sa.literal(fraction, sa.Float)).within_group(value) \
        .filter(where)


def _grouped(stmt: sa.Select[Any], base: sa.Subquery, pg: bool, grouped: bool
             ) -> sa.Select[Any]:
    """GROUP BY the key; on PostgreSQL, when there are groups, also the grand total (its row
    has total = 1: its percentiles are the totals')."""
    k, koff = base.c.k, base.c.koff
    if pg and grouped:
        return stmt.add_columns(sa.func.grouping(k, koff).label("total")).group_by(
            sa.func.grouping_sets(sa.tuple_(k, koff), sa.tuple_()))
    return stmt.add_columns(sa.literal(0, sa.Integer).label("total")).group_by(k, koff)


# -- the calls' figures from the hourly rollup -------------------------------------------------

def rollup_answers(q: StatsQuery, pieces: list[tuple[datetime | None, int]]) -> bool:
    """Whether the hourly rollup gives this query's calls figures (see callhub/store/rollup.py).

    Not for group_by=agent (the rollup has no agents), nor a T of the service level
    that is not whole seconds; the period must start and end on whole UTC hours; by
    hour or day, every UTC offset of the period must be whole hours and change on a
    whole UTC hour (a zone such as Asia/Kolkata, +05:30, takes the exact query).
    """
    if q.group_by == "agent" or not float(q.seconds).is_integer():
        return False
    if q.start.timestamp() % rollup.HOUR or q.end.timestamp() % rollup.HOUR:
        return False
    if q.group_by in ("hour", "day"):
        if any(offset % rollup.HOUR for _, offset in pieces):
            return False
        if any(until.timestamp() % rollup.HOUR for until, _ in pieces if until is not None):
            return False
    return True


Pieces = tuple[tuple[datetime | None, int], ...]


def _rollup_key(group_by: str | None, pieces: Pieces) -> list[sa.ColumnElement[Any]]:
    """The group key (k, koff) of a rollup row, as _key_columns gives it for its calls."""
    h = call_hours.c
    if group_by in ("hour", "day"):
        if len(pieces) == 1:
            offset: sa.ColumnElement[int] = sa.literal(pieces[0][1], sa.Integer)
        else:
            offset = sa.case(*((h.hour < rollup.hour_of(until), sa.literal(off, sa.Integer))
                               for until, off in pieces[:-1] if until is not None),
                             else_=sa.literal(pieces[-1][1], sa.Integer))
        local = h.hour * rollup.HOUR + offset
        if group_by == "hour":
            return [(local // 3600).label("k"), offset.label("koff")]
        return [(local // 86400).label("k"), sa.literal(0, sa.Integer).label("koff")]
    if group_by == "line":
        return [h.line.label("k"), sa.literal(0, sa.Integer).label("koff")]
    return [sa.literal(0, sa.Integer).label("k"), sa.literal(0, sa.Integer).label("koff")]


RingTargets = tuple[int, tuple[tuple[str, int], ...]]
"""The default target_rings and each configured line's: what a statement needs of
LineTargets, hashable."""


def ring_targets(targets: LineTargets) -> RingTargets:
    return (targets.default.target_rings,
            tuple(sorted((name, t.target_rings) for name, t in targets.lines.items())))


def target_rings(targets: RingTargets, line: Any) -> sa.ColumnElement[int]:
    """Each row's line's target_rings, as SQL."""
    default_rings, lines = targets
    default = sa.literal(default_rings, sa.Integer)
    if not lines:
        return default
    return sa.case(dict(lines), value=line, else_=default)


def _rollup_where(by_pbx: bool) -> list[sa.ColumnElement[bool]]:
    """The rollup rows of a period (and a PBX): bound to `rollup_params`."""
    h = call_hours.c
    where = [h.hour >= sa.bindparam("lo_hour", type_=sa.BigInteger),
             h.hour < sa.bindparam("hi_hour", type_=sa.BigInteger)]
    if by_pbx:
        where.append(h.pbx == sa.bindparam("pbx", type_=h.pbx.type))
    return where


def rollup_params(q: StatsQuery) -> dict[str, Any]:
    """The values of a rollup statement's period and PBX."""
    params: dict[str, Any] = {"lo_hour": rollup.hour_of(q.start),
                              "hi_hour": rollup.hour_of(q.end)}
    if q.pbx is not None:
        params["pbx"] = q.pbx
    return params


@functools.lru_cache(maxsize=128)
def _rollup_figures(group_by: str | None, pieces: Pieces, by_pbx: bool, rings: int,
                    targets: RingTargets) -> sa.Select[Any]:
    """The calls' figures per group from the rollup: counts, sums, the within-N-rings
    counts, the joined wait and ring-time bins. Built once per shape (the period and
    PBX are bound), so a request runs it straight through asyncpg (callhub/store/fetch.py)."""
    h = call_hours.c
    key = _rollup_key(group_by, pieces)
    total = sa.func.sum
    stmt = sa.select(
        *key, total(h.outbound), total(h.short_abandons), total(h.answered),
        total(h.abandoned), total(h.missed), total(h.other_inbound), total(h.hangup_known),
        total(h.agent_hung_up_first), total(h.ring_sum), total(h.wait_sum),
        total(rollup.within(rings)), total(rollup.within(target_rings(targets, h.line))),
        rollup.Joined(h.wait_bins), rollup.Joined(h.ring_bins),
    ).where(*_rollup_where(by_pbx))
    if group_by is not None:
        stmt = stmt.group_by(*(c.element for c in key))
    return stmt


@functools.lru_cache(maxsize=64)
def _rollup_line_tallies(by_pbx: bool, short_counted: bool, targets: RingTargets
                         ) -> sa.Select[Any]:
    """Per line: inbound calls, answered ones and those within the line's target."""
    h = call_hours.c
    total = sa.func.sum
    short = h.short_abandons if short_counted else sa.literal(0, sa.Integer)
    return sa.select(h.line, total(h.answered + h.abandoned + h.missed + h.other_inbound + short),
                     total(h.answered), total(rollup.within(target_rings(targets, h.line)))
                     ).where(*_rollup_where(by_pbx)).group_by(h.line)


async def _calls_from_rollup(conn: Reader, q: StatsQuery,
                             pieces: list[tuple[datetime | None, int]],
                             acc: Callable[[Any, Any], _Acc], totals: _Acc
                             ) -> dict[str | None, TargetTally]:
    """The calls' figures per group, added up from the rollup's hours (rollup_answers),
    each group's calls within their line's target included; the per-line tallies.

    Counts, sums and the within-N-rings counts in SQL; the wait and ring-time values
    joined per group and counted in Python."""
    targets = ring_targets(q.targets)
    stmt = _rollup_figures(q.group_by, tuple(pieces), q.pbx is not None, q.rings, targets)
    params = rollup_params(q)
    everything: Counter[int] = Counter()
    seconds = int(q.seconds)
    for (k, koff, outbound, short, answered, abandoned, missed, other, hangup_known,
         agent_first, ring_sum, wait_sum, within_rings, within_target, wait_bins,
         ring_bins) in await fetch.rows(conn, stmt, params):
        if answered is None:  # no group: no row of the rollup in the period
            continue
        a = acc(k, koff)
        a.outbound, a.short_abandons, a.answered, a.missed = outbound, short, answered, missed
        counted_short = 0 if q.exclude_short_abandons else short
        a.inbound = answered + abandoned + missed + other + counted_short
        a.abandoned = abandoned + counted_short
        a.hangup_known, a.agent_hung_up_first = hangup_known, agent_first
        a.ring_sum, a.wait_sum = ring_sum or 0.0, wait_sum or 0.0
        a.within_rings, a.within_target = within_rings, within_target
        a.within_seconds = bisect.bisect_right(rollup.values(wait_bins), seconds)
        ring = rollup.values(ring_bins)
        a.p90_ring = rollup.p90_ring(ring, nearest_rank(len(ring), P90))
        everything.update(ring)
    totals.p90_ring = rollup.p90_ring_counted(everything,
                                              nearest_rank(everything.total(), P90))
    return await _line_tallies_from_rollup(conn, q, targets, params)


async def _line_tallies_from_rollup(conn: Reader, q: StatsQuery,
                                    targets: RingTargets, params: dict[str, Any]
                                    ) -> dict[str | None, TargetTally]:
    """Per line over the whole period: its inbound calls, answered ones and those
    answered within its own target_rings, summed by the database."""
    stmt = _rollup_line_tallies(q.pbx is not None, not q.exclude_short_abandons, targets)
    out: dict[str | None, TargetTally] = {}
    for line, inbound, answered, within_target in await fetch.rows(conn, stmt, params):
        if inbound:
            out.setdefault(line or None, TargetTally()).add(
                TargetTally(inbound, answered, within_target))
    return out


def counted_calls(q: StatsQuery) -> list[sa.ColumnElement[bool]]:
    """The calls the figures of `q` count: inbound and outbound arriving in its period."""
    c = calls.c
    where = [c.arrived_at >= q.start, c.arrived_at < q.end,
             c.direction.in_(("inbound", "outbound"))]
    if q.pbx is not None:
        where.append(c.pbx == q.pbx)
    return where


def _calls_base(q: StatsQuery, pieces: list[tuple[datetime | None, int]]
                ) -> tuple[sa.Subquery, sa.ColumnElement[bool]]:
    """The period's calls as small codes per row, and which of them count as inbound.

    Each row is first reduced to small integer codes, in a subquery kept apart
    (OFFSET 0) so that the many FILTERs compare integers instead of re-evaluating
    text comparisons."""
    c = calls.c
    where = counted_calls(q)
    kind = sa.case(
        (c.direction == "outbound", OUTBOUND),
        (sa.and_(c.short_abandon, c.outcome == "abandoned"), SHORT),
        (c.outcome == "answered", ANSWERED), (c.outcome == "abandoned", ABANDONED),
        (c.outcome == "missed", MISSED), else_=OTHER)
    hung_up = sa.case((c.hangup_by.is_(None), 0), (c.hangup_by == "agent", 2), else_=1)
    base = sa.select(
        *_key_columns(q.group_by, c.arrived_at, c.agent, c.line, pieces),
        kind.label("kind"), hung_up.label("hung_up"), c.rings, c.ring_seconds,
        c.wait_seconds, c.line.label("line"),
        *((sa.case((sa.and_(c.agent != "", c.agent_name != ""), c.agent_name))
           .label("agent_name"),) if q.group_by == "agent" else ()),
    ).where(*where).offset(0).subquery("base")
    b = base.c
    counted = b.kind >= (ANSWERED if q.exclude_short_abandons else SHORT)
    return base, counted


async def _calls_exact(conn: AsyncConnection, q: StatsQuery,
                       pieces: list[tuple[datetime | None, int]],
                       acc: Callable[[Any, Any], _Acc], totals: _Acc,
                       agent_names: dict[Any, str]
                       ) -> dict[tuple[Any, int], dict[str | None, TargetTally]]:
    """The calls' figures per group, counted from `calls`; the per-line target tallies.

    Counts and sums per group (and on PostgreSQL the p90 ring time)."""
    pg = conn.dialect.name == "postgresql"
    grouped = q.group_by is not None
    base, counted = _calls_base(q, pieces)
    b = base.c
    answered = b.kind == ANSWERED
    count = sa.func.count
    stmt = sa.select(
        b.k, b.koff,
        count().filter(b.kind == OUTBOUND), count().filter(b.kind == SHORT),
        count().filter(counted), count().filter(answered),
        count().filter(b.kind == ABANDONED if q.exclude_short_abandons
                       else b.kind.in_((SHORT, ABANDONED))),
        count().filter(b.kind == MISSED),
        count().filter(sa.and_(answered, b.rings <= q.rings)),
        count().filter(sa.and_(answered, b.wait_seconds <= q.seconds)),
        count().filter(sa.and_(answered, b.hung_up > 0)),
        count().filter(sa.and_(answered, b.hung_up == 2)),
        sa.func.sum(b.ring_seconds).filter(answered),
        sa.func.sum(b.wait_seconds).filter(answered),
        sa.func.max(b.agent_name) if q.group_by == "agent" else sa.null(),
        _disc(P90 / 100 - _HAIR, b.ring_seconds, answered) if pg else sa.null(),
    )
    for (k, koff, outbound, short, inbound, answered_n, abandoned, missed, within_rings,
         within_seconds, hangup_known, agent_first, ring_sum, wait_sum, agent_name, p90,
         total) in (await conn.execute(_grouped(stmt, base, pg, grouped))).all():
        if total:
            totals.p90_ring = p90
            continue
        a = acc(k, koff)
        a.outbound, a.short_abandons, a.inbound, a.answered = outbound, short, inbound, \
            answered_n
        a.abandoned, a.missed, a.within_rings, a.within_seconds = abandoned, missed, \
            within_rings, within_seconds
        a.hangup_known, a.agent_hung_up_first = hangup_known, agent_first
        a.ring_sum, a.wait_sum, a.p90_ring = ring_sum or 0.0, wait_sum or 0.0, p90
        if k and agent_name:
            agent_names[k] = agent_name
    if not pg:
        for row in (await conn.execute(_ranked(base, b.ring_seconds, answered, grouped,
                                               lambda rn, n: _nearest_rank(rn, n, P90)))).all():
            if row.in_group:
                acc(row.k, row.koff).p90_ring = float(row.v)
            if row.in_all:
                totals.p90_ring = float(row.v)
    return await _line_tallies(conn, base, counted, q.targets)


def _worklist_base(group_by: str | None, pieces: Pieces, by_pbx: bool) -> sa.Subquery:
    """The period's worklist entries (bound: start, end, pbx) with their group key."""
    w = worklist_entries.c
    where = [w.first_missed_at >= sa.bindparam("start", type_=w.first_missed_at.type),
             w.first_missed_at < sa.bindparam("end", type_=w.first_missed_at.type)]
    if by_pbx:
        where.append(w.pbx == sa.bindparam("pbx", type_=w.pbx.type))
    return sa.select(
        *_key_columns(group_by, w.first_missed_at, None, sa.func.nullif(w.line, ""), pieces),
        w.status, w.time_to_callback_seconds,
    ).where(*where).subquery("wbase")


def _timed(wb: Any) -> sa.ColumnElement[bool]:
    """Of `_worklist_base`'s entries, those with a time to callback (handled)."""
    return sa.and_(wb.status == "handled", wb.time_to_callback_seconds.is_not(None))


@functools.lru_cache(maxsize=128)
def _worklist_statement(group_by: str | None, pieces: Pieces, by_pbx: bool, pg: bool
                        ) -> sa.Select[Any]:
    """Pending and handled entries per group, and (PostgreSQL) the median's middle
    values; built once per shape, so a request runs it straight through asyncpg."""
    wbase = _worklist_base(group_by, pieces, by_pbx)
    wb = wbase.c
    timed = _timed(wb)
    wstmt = sa.select(
        wb.k, wb.koff, sa.func.count().filter(wb.status == "pending"),
        sa.func.count().filter(wb.status == "handled"),
        _disc(0.5 - _HAIR, wb.time_to_callback_seconds, timed) if pg else sa.null(),
        _disc(0.5 + _HAIR, wb.time_to_callback_seconds, timed) if pg else sa.null())
    return _grouped(wstmt, wbase, pg, group_by is not None)


async def _worklist_figures(conn: Reader, q: StatsQuery,
                            pieces: list[tuple[datetime | None, int]],
                            acc: Callable[[Any, Any], _Acc], totals: _Acc) -> None:
    """Worklist entries whose first miss is in the period: counts and median callback
    time, per group and in all."""
    pg = conn.dialect.name == "postgresql"
    grouped = q.group_by is not None
    params: dict[str, Any] = {"start": q.start, "end": q.end}
    if q.pbx is not None:
        params["pbx"] = q.pbx
    stmt = _worklist_statement(q.group_by, tuple(pieces), q.pbx is not None, pg)
    for k, koff, pending, handled, lower, upper, total in await fetch.rows(conn, stmt,
                                                                              params):
        a = totals if total else acc(k, koff)
        if lower is not None:
            a.median_middle = [lower, upper]
        if not total:
            a.pending_callbacks, a.handled_callbacks = pending, handled
    if not pg:
        wbase = _worklist_base(q.group_by, tuple(pieces), q.pbx is not None)
        wb = wbase.c
        ranked = _ranked(wbase, wb.time_to_callback_seconds, _timed(wb), grouped, _middle)
        for row in (await connection_of(conn).execute(ranked, params)).all():
            if row.in_group:
                acc(row.k, row.koff).median_middle.append(float(row.v))
            if row.in_all:
                totals.median_middle.append(float(row.v))


Reads = Callable[[Callable[[Reader], Awaitable[Any]]], Awaitable[Any]]
"""`Database.read`: `work(conn)` on a connection of its own, outside a transaction."""
Source = AsyncConnection | Reads
"""Where statements run: one connection, one after the other, or `Reads`, where
independent ones run at once, each on its own connection. What the rollup cannot answer
is counted from the calls with more sort memory in a transaction: give it a connection."""


def connection_of(conn: Reader) -> AsyncConnection:
    """`conn` for SQLAlchemy's execution: what the rollup cannot answer (and SQLite's
    ranking) is not run on the read pool's connections (`Source`)."""
    if not isinstance(conn, AsyncConnection):
        raise TypeError("counted from the calls: give a connection (Database.connection), "
                        "not Database.read")
    return conn


async def run(source: Source, work: Callable[[Reader], Awaitable[T]]) -> T:
    """`work` on the source's connection."""
    if isinstance(source, AsyncConnection):
        return await work(source)
    result: T = await source(work)
    return result


async def run_each(source: Source, *works: Callable[[Reader], Awaitable[Any]]
                   ) -> list[Any]:
    """Independent `works`: one after the other on a connection; at once with `Reads` (a
    cold answer then waits for its slowest statement, not for all of them in turn)."""
    if isinstance(source, AsyncConnection):
        return [await work(source) for work in works]
    return list(await asyncio.gather(*(source(work) for work in works)))


async def compute(source: Source, q: StatsQuery) -> dict[str, Any]:
    """Totals and (with group_by) one block per group, sorted by key (None last)."""
    pieces = offset_pieces(q.start, q.end, q.tz)
    from_rollup = q.rollup and rollup_answers(q, pieces)
    grouped = q.group_by is not None
    totals = _Acc()
    groups: dict[tuple[Any, int], _Acc] = {}
    agent_names: dict[Any, str] = {}

    def acc(k: Any, koff: Any) -> _Acc:
        found = groups.get((k, koff))
        if found is None:
            found = groups[(k, koff)] = _Acc()
        return found

    async def calls_part(reader: Reader) -> list[dict[str | None, TargetTally]]:
        if from_rollup:
            return [await _calls_from_rollup(reader, q, pieces, acc, totals)]
        conn = connection_of(reader)
        if conn.dialect.name == "postgresql":  # a month's calls sorted by hour: a few MB,
            # more than the default 4 MB in memory
            await conn.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
        by_group = await _calls_exact(conn, q, pieces, acc, totals, agent_names)
        # Each group's calls against their line's own ring target.
        for (k, koff), tallies in by_group.items():
            acc(k, koff).within_target = sum(t.within_target for t in tallies.values())
        return list(by_group.values())

    async def worklist_part(conn: Reader) -> None:
        await _worklist_figures(conn, q, pieces, acc, totals)

    by_line, _ = await run_each(source, calls_part, worklist_part)
    for a in groups.values():
        totals.add(a)
    targets = {"default_target": _target(q.targets, None),
               "line_targets": line_target_figures(q.targets, by_line)}
    if not grouped:  # one group, the totals
        only = groups.get((0, 0))
        if only is not None:
            totals.p90_ring, totals.median_middle = only.p90_ring, only.median_middle
        return {"totals": totals.figures(), **targets}
    blocks = []
    for (k, koff), a in groups.items():
        block: dict[str, Any] = {"key": _group_key(q, k, koff)}
        if q.group_by == "agent":
            block["agent_name"] = agent_names.get(k) if k else None
        block.update(a.figures())
        if q.group_by == "line":
            block.update(_target(q.targets, k or None))
        blocks.append(block)
    blocks.sort(key=lambda g: (g["key"] is None, "" if g["key"] is None else str(g["key"])))
    return {"totals": totals.figures(), "groups": blocks, **targets}


# The grouping, for the figures computed elsewhere (callhub/store/resolution_stats.py).
key_columns = _key_columns
group_key = _group_key
rollup_key = _rollup_key
rollup_where = _rollup_where


# -- each line's own target --------------------------------------------------------------------

async def _line_tallies(conn: AsyncConnection, base: sa.Subquery,
                        counted: sa.ColumnElement[bool], targets: LineTargets
                        ) -> dict[tuple[Any, int], dict[str | None, TargetTally]]:
    """Per group key, per line: the counted inbound calls against the line's target.

    The database counts calls per (group, line, rings of an answered call); which
    rings are within a line's target is `tally_rings`' rule."""
    b = base.c
    rings = sa.case((b.kind == ANSWERED, b.rings)).label("answered_rings")
    stmt = sa.select(b.k, b.koff, b.line, rings, sa.func.count()).where(counted) \
        .group_by(b.k, b.koff, b.line, rings)
    rows: dict[tuple[Any, int], list[tuple[str | None, int | None, int]]] = {}
    for k, koff, line, answered_rings, n in (await conn.execute(stmt)).all():
        rows.setdefault((k, koff), []).append((line or None, answered_rings, n))
    return {key: tally_rings(found, targets) for key, found in rows.items()}


def _target(targets: LineTargets, line: str | None) -> dict[str, Any]:
    target = targets.of(line)
    return {"target_rings": target.target_rings,
            "answer_rate_target": target.answer_rate_target}


def line_target_figures(targets: LineTargets,
                        tallies: Iterable[dict[str | None, TargetTally]]
                        ) -> list[dict[str, Any]]:
    """Every configured line, and every other line with calls: its targets, its calls, and
    the share answered within its target_rings (`target_met`: at least its answer-rate
    target; null without calls). Calls without a line are in the totals only."""
    per_line: dict[str, TargetTally] = {line: TargetTally() for line in targets.known}
    for found in tallies:
        for line, tally in found.items():
            if line is not None:
                per_line.setdefault(line, TargetTally()).add(tally)
    order = [*targets.known, *sorted(set(per_line) - set(targets.known))]
    out = []
    for line in order:
        tally = per_line[line]
        rate = ratio(tally.within_target, tally.inbound)
        out.append({"line": line, **_target(targets, line), "inbound": tally.inbound,
                    "answered": tally.answered, "answered_within_target": tally.within_target,
                    "within_target_rate": rate, "target_met": targets.of(line).met(rate)})
    return out
