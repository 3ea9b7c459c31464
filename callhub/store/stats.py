"""Desk figures over a period, as DESIGN.md defines them, optionally grouped.

The rows of a period are read once and the figures computed in Python: the
same arithmetic on SQLite and PostgreSQL, percentiles included, and a desk's
volume (thousands of calls a day) is small. Short abandons are left out of
every figure but their own count when `stats_exclude_short_abandons` is set.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store.tables import calls, worklist_entries

GROUPS = ("hour", "day", "agent", "line")


@dataclass(slots=True)
class _Acc:
    """Running totals of one group."""

    inbound: int = 0
    outbound: int = 0
    answered: int = 0
    abandoned: int = 0
    short_abandons: int = 0
    missed: int = 0
    within_rings: int = 0
    within_seconds: int = 0
    hangup_known: int = 0
    agent_hung_up_first: int = 0
    ring_seconds: list[float] = field(default_factory=list)
    wait_seconds: list[float] = field(default_factory=list)
    pending_callbacks: int = 0
    handled_callbacks: int = 0
    callback_seconds: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "inbound": self.inbound,
            "outbound": self.outbound,
            "answered": self.answered,
            "abandoned": self.abandoned,
            "short_abandons": self.short_abandons,
            "missed": self.missed,
            "answer_rate": _ratio(self.answered, self.inbound),
            "answered_within_rings": self.within_rings,
            "within_rings_rate": _ratio(self.within_rings, self.inbound),
            "within_rings_rate_answered": _ratio(self.within_rings, self.answered),
            "answered_within_seconds": self.within_seconds,
            "service_level": _ratio(self.within_seconds, self.inbound),
            "service_level_answered": _ratio(self.within_seconds, self.answered),
            "avg_ring_seconds": _mean(self.ring_seconds),
            "p90_ring_seconds": percentile(self.ring_seconds, 90),
            "avg_speed_of_answer_seconds": _mean(self.wait_seconds),
            "agent_hangup_first_rate": _ratio(self.agent_hung_up_first, self.hangup_known),
            "pending_callbacks": self.pending_callbacks,
            "handled_callbacks": self.handled_callbacks,
            "median_time_to_callback_seconds": (
                round(statistics.median(self.callback_seconds), 3)
                if self.callback_seconds else None),
        }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Nearest-rank percentile (an observed value; p90 of 10 values is the 9th)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return round(ordered[rank - 1], 3)


@dataclass(frozen=True, slots=True)
class StatsQuery:
    start: datetime
    end: datetime
    group_by: str | None = None
    rings: int = 3
    seconds: float = 20.0
    exclude_short_abandons: bool = True
    tz: tzinfo | None = None
    pbx: str | None = None


def _key_fn(q: StatsQuery) -> Callable[[datetime | None, str | None, str | None], Any]:
    tz = q.tz

    def key(at: datetime | None, agent: str | None, line: str | None) -> Any:
        if q.group_by == "hour" and at is not None:
            return at.astimezone(tz).replace(minute=0, second=0, microsecond=0).isoformat()
        if q.group_by == "day" and at is not None:
            return at.astimezone(tz).date().isoformat()
        if q.group_by == "agent":
            return agent
        if q.group_by == "line":
            return line
        return None
    return key


async def compute(conn: AsyncConnection, q: StatsQuery) -> dict[str, Any]:
    """Totals and (with group_by) one block per group, sorted by key (None last)."""
    key = _key_fn(q)
    totals = _Acc()
    groups: dict[Any, _Acc] = {}
    agent_names: dict[str, str] = {}

    def accs(k: Any) -> tuple[_Acc, ...]:
        if q.group_by is None:
            return (totals,)
        return (totals, groups.setdefault(k, _Acc()))

    c = calls.c
    where = [c.arrived_at >= q.start, c.arrived_at < q.end]
    if q.pbx is not None:
        where.append(c.pbx == q.pbx)
    result = await conn.execute(
        sa.select(c.direction, c.arrived_at, c.line, c.agent, c.agent_name, c.outcome,
                  c.short_abandon, c.rings, c.ring_seconds, c.wait_seconds, c.hangup_by)
        .where(*where, c.direction.in_(("inbound", "outbound"))))
    for row in result:
        if row.agent and row.agent_name:
            agent_names[row.agent] = row.agent_name
        targets = accs(key(row.arrived_at, row.agent, row.line))
        if row.direction == "outbound":
            for acc in targets:
                acc.outbound += 1
            continue
        short = bool(row.short_abandon) and row.outcome == "abandoned"
        for acc in targets:
            if short:
                acc.short_abandons += 1
                if q.exclude_short_abandons:
                    continue
            acc.inbound += 1
            if row.outcome == "answered":
                acc.answered += 1
                if row.rings <= q.rings:
                    acc.within_rings += 1
                if row.wait_seconds <= q.seconds:
                    acc.within_seconds += 1
                acc.ring_seconds.append(row.ring_seconds)
                acc.wait_seconds.append(row.wait_seconds)
                if row.hangup_by is not None:
                    acc.hangup_known += 1
                    acc.agent_hung_up_first += row.hangup_by == "agent"
            elif row.outcome == "abandoned":
                acc.abandoned += 1
            elif row.outcome == "missed":
                acc.missed += 1

    w = worklist_entries.c
    wwhere = [w.first_missed_at >= q.start, w.first_missed_at < q.end]
    if q.pbx is not None:
        wwhere.append(w.pbx == q.pbx)
    entries = await conn.execute(
        sa.select(w.first_missed_at, w.line, w.status, w.time_to_callback_seconds)
        .where(*wwhere))
    for entry in entries:
        for acc in accs(key(entry.first_missed_at, None, entry.line or None)):
            if entry.status == "pending":
                acc.pending_callbacks += 1
            elif entry.status == "handled":
                acc.handled_callbacks += 1
                if entry.time_to_callback_seconds is not None:
                    acc.callback_seconds.append(entry.time_to_callback_seconds)

    out: dict[str, Any] = {"totals": totals.figures()}
    if q.group_by is not None:
        blocks = []
        for k in sorted(groups, key=lambda g: (g is None, "" if g is None else str(g))):
            block: dict[str, Any] = {"key": k}
            if q.group_by == "agent":
                block["agent_name"] = agent_names.get(k) if k else None
            block.update(groups[k].figures())
            blocks.append(block)
        out["groups"] = blocks
    return out
