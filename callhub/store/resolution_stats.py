"""Resolution rate and satisfaction rate over a period, per hour, day, agent or line.

Kept apart from callhub/store/stats.py (its own two grouped queries) so each can be
tuned on its own; `add_to` puts these figures into that module's result, so
GET /api/v1/stats, the desk and `callhub report` show them beside the others.

Definitions (docs/api.md, the API's descriptions, tests/test_resolution_stats.py):

- The calls counted are those `stats.compute` counts: inbound and outbound calls that
  arrived in the period (of the PBX, when given), grouped by their arrival hour or day,
  their answering agent or their line.
- resolution_rate = resolved / calls with a resolution set. Calls without one are not
  in it (no verdict yet); `referred`, `pending` and `unresolved` count against it.
- satisfaction_rate = follow-ups answered `satisfied` / follow-ups answered `satisfied`,
  `fair` or `dissatisfied`, over the follow-ups of those calls (each answer counts, so a
  call followed up twice counts twice). `unreachable` (nobody to ask) is counted on its
  own and left out of the rate, as are follow-ups with no satisfaction recorded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store import fetch, stats
from callhub.store.read_pool import Reader
from callhub.store.resolution import RATED, RESOLUTIONS, SATISFACTIONS
from callhub.store.tables import RESOLUTION_COUNTS, call_hours, calls, followups

RESOLUTION_FIGURES_DOC = {
    "resolutions_set": "Calls with a resolution set (resolved, referred, pending or "
                       "unresolved).",
    "resolved": "Calls whose resolution is resolved.",
    "referred": "Calls whose resolution is referred (to a department).",
    "resolution_pending": "Calls whose resolution is pending.",
    "unresolved": "Calls whose resolution is unresolved.",
    "resolution_rate": "resolved / calls with a resolution set (calls without one are left "
                       "out; referred, pending and unresolved count against it).",
    "satisfied": "Follow-ups of these calls answered satisfied.",
    "fair": "Follow-ups of these calls answered fair.",
    "dissatisfied": "Follow-ups of these calls answered dissatisfied.",
    "unreachable": "Follow-ups of these calls that could not reach the caller.",
    "satisfaction_rate": "satisfied / follow-ups answered satisfied, fair or dissatisfied "
                         "(unreachable and unrated ones left out).",
}
assert tuple(RESOLUTION_COUNTS) == RESOLUTIONS
assert all(s in RESOLUTION_FIGURES_DOC for s in SATISFACTIONS)


@dataclass(slots=True)
class _Counts:
    by_resolution: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESOLUTIONS, 0))
    by_satisfaction: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(SATISFACTIONS, 0))

    def add(self, other: _Counts) -> None:
        for name in RESOLUTIONS:
            self.by_resolution[name] += other.by_resolution[name]
        for name in SATISFACTIONS:
            self.by_satisfaction[name] += other.by_satisfaction[name]

    def any(self) -> bool:
        """Whether anything was recorded (a group of the rollup may have nothing)."""
        return any(self.by_resolution.values()) or any(self.by_satisfaction.values())

    def figures(self) -> dict[str, Any]:
        r, s = self.by_resolution, self.by_satisfaction
        set_ = sum(r.values())
        rated = sum(s[name] for name in RATED)
        return {
            "resolutions_set": set_,
            **{RESOLUTION_COUNTS[name]: r[name] for name in RESOLUTIONS},
            "resolution_rate": stats.ratio(r["resolved"], set_),
            **s,
            "satisfaction_rate": stats.ratio(s["satisfied"], rated),
        }


async def _counts_by_value(conn: AsyncConnection, base: sa.Subquery
                           ) -> list[tuple[Any, Any, Any, int]]:
    """(group key, offset, value, how many) of a subquery of k, koff and v columns."""
    b = base.c
    rows = await conn.execute(
        sa.select(b.k, b.koff, b.v, sa.func.count()).group_by(b.k, b.koff, b.v))
    return [(k, koff, value, n) for k, koff, value, n in rows]


@functools.lru_cache(maxsize=64)
def _rollup_counts(group_by: str | None, pieces: stats.Pieces, by_pbx: bool
                   ) -> sa.Select[Any]:
    """The counts per group from the rollup; built once per shape (stats.rollup_params
    binds the period and PBX)."""
    h = call_hours.c
    key = stats.rollup_key(group_by, pieces)
    stmt = sa.select(*key, *(sa.func.sum(h[name]) for name in RESOLUTION_COUNTS.values()),
                     *(sa.func.sum(h[name]) for name in SATISFACTIONS)
                     ).where(*stats.rollup_where(by_pbx))
    if group_by is not None:
        stmt = stmt.group_by(*(c.element for c in key))
    return stmt


async def _from_rollup(conn: Reader, q: stats.StatsQuery,
                       pieces: list[tuple[Any, int]],
                       acc: Callable[[Any, Any], _Counts]) -> None:
    """The counts per group, summed from the hourly rollup (stats.rollup_answers)."""
    stmt = _rollup_counts(q.group_by, tuple(pieces), q.pbx is not None)
    resolutions, satisfactions = len(RESOLUTIONS), len(SATISFACTIONS)
    for k, koff, *counts in await fetch.rows(conn, stmt, stats.rollup_params(q)):
        if not any(counts):  # nothing recorded in the group, or no row of the rollup
            continue
        found = acc(k, koff)
        for name, n in zip(RESOLUTIONS, counts[:resolutions], strict=True):
            found.by_resolution[name] += n
        for name, n in zip(SATISFACTIONS, counts[resolutions:resolutions + satisfactions],
                           strict=True):
            found.by_satisfaction[name] += n


async def compute(conn: Reader, q: stats.StatsQuery) -> dict[str, Any]:
    """{"totals": figures, "groups": {API group key: figures}} (groups: with group_by).

    From the hourly rollup when the query allows it (`q.rollup`), else from the calls."""
    pieces = stats.offset_pieces(q.start, q.end, q.tz)
    groups: dict[tuple[Any, int], _Counts] = {}

    def acc(k: Any, koff: Any) -> _Counts:
        return groups.setdefault((k, int(koff)), _Counts())

    if q.rollup and stats.rollup_answers(q, pieces):
        await _from_rollup(conn, q, pieces, acc)
    else:
        await _from_calls(stats.connection_of(conn), q, pieces, acc)
    totals = _Counts()
    for counts in groups.values():
        totals.add(counts)
    out: dict[str, Any] = {"totals": totals.figures()}
    if q.group_by is not None:
        out["groups"] = {stats.group_key(q, k, koff): counts.figures()
                         for (k, koff), counts in groups.items() if counts.any()}
    return out


async def _from_calls(conn: AsyncConnection, q: stats.StatsQuery,
                      pieces: list[tuple[Any, int]],
                      acc: Callable[[Any, Any], _Counts]) -> None:
    """The counts per group, counted from the calls and their follow-ups."""
    c = calls.c
    keys = stats.key_columns(q.group_by, c.arrived_at, c.agent, c.line, pieces)
    base = (sa.select(*keys, c.resolution.label("v"))
            .where(*stats.counted_calls(q), c.resolution.is_not(None)).subquery("rbase"))
    for k, koff, value, n in await _counts_by_value(conn, base):
        if value in RESOLUTIONS:
            acc(k, koff).by_resolution[value] += n
    f = followups.c
    fbase = (sa.select(*keys, f.satisfaction.label("v")).select_from(
        followups.join(calls, c.id == f.call_id))
        .where(*stats.counted_calls(q), f.satisfaction.is_not(None)).subquery("sbase"))
    for k, koff, value, n in await _counts_by_value(conn, fbase):
        if value in SATISFACTIONS:
            acc(k, koff).by_satisfaction[value] += n


def empty() -> dict[str, Any]:
    """The figures of a group with no resolution and no satisfaction recorded."""
    return _Counts().figures()


def add_to(result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`stats.compute`'s result with these figures added to its totals and each group.

    Both count the same calls, so every group here is a group there; a group there
    with nothing recorded gets zero counts and no rates.
    """
    result["totals"].update(extra["totals"])
    found = extra.get("groups", {})
    nothing = empty()
    for block in result.get("groups", ()):
        block.update(found.get(block["key"], nothing))
    return result


async def compute_into(conn: AsyncConnection, q: stats.StatsQuery,
                       result: dict[str, Any]) -> dict[str, Any]:
    """`add_to(result, compute(conn, q))`: the one call the API and the report make."""
    return add_to(result, await compute(conn, q))
