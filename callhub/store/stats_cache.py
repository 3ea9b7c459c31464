"""A process's cache of stats figures, used while what they were counted from is unchanged.

A month by hour is 720 blocks of figures: even from the hourly rollup, adding
them up costs more Python than a page of calls, and desks ask for the same
few periods over and over. Only figures the rollup gives are cached; each is
kept with a token of its inputs, read before it is computed and again on
every request (two index range reads):

- the period's rollup rows: their number and latest `changed_at` (the writer
  recomputes a bucket with `changed_at` = now whenever a call of it is stored);
- the period's worklist entries: their number and latest `updated_at` (every
  change of an entry sets it).

Any write to the period changes the token, so an answer is never older than
the request (a write committed between the token and the computation only
costs a recomputation on the next request). On PostgreSQL `changed_at` is
the database's clock read under the rollup's lock, so it grows with every
write whatever the writers' hosts' clocks say; a worklist entry's
`updated_at` is its writer's clock, so two hosts whose clocks differ can
leave a worklist figure cached until the next write to that period.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store import rollup, stats
from callhub.store.tables import call_hours, worklist_entries

SIZE = 64  # queries kept (a month by hour is about 400 KB of figures)

Token = tuple[Any, ...]


async def token(conn: AsyncConnection, q: stats.StatsQuery) -> Token:
    """What the figures of `q` were counted from, in a few values."""
    h, w = call_hours.c, worklist_entries.c
    hours = [h.hour >= rollup.hour_of(q.start), h.hour < rollup.hour_of(q.end)]
    entries = [w.first_missed_at >= q.start, w.first_missed_at < q.end]
    if q.pbx is not None:
        hours.append(h.pbx == q.pbx)
        entries.append(w.pbx == q.pbx)
    parts = [sa.select(sa.func.count()).where(*hours).scalar_subquery(),
             sa.select(sa.func.max(h.changed_at)).where(*hours).scalar_subquery(),
             sa.select(sa.func.count()).where(*entries).scalar_subquery(),
             sa.select(sa.func.max(w.updated_at)).where(*entries).scalar_subquery()]
    return tuple((await conn.execute(sa.select(*parts))).one())  # one round trip


def _key(q: stats.StatsQuery) -> Hashable:
    """The query as a dict key (its line targets hold a mapping)."""
    t = q.targets
    return (q.start, q.end, q.group_by, q.rings, q.seconds, q.exclude_short_abandons, q.tz,
            q.pbx, t.default, tuple(sorted(t.lines.items())), t.known)


def _copy(figures: dict[str, Any]) -> dict[str, Any]:
    """A copy down to the blocks of figures (their values are numbers and strings)."""
    out = {**figures, "totals": dict(figures["totals"])}
    if "groups" in figures:
        out["groups"] = [dict(block) for block in figures["groups"]]
    return out


class StatsCache:
    """`compute` as stats.compute, answering again from memory while the token holds."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._kept: OrderedDict[Hashable, tuple[Token, dict[str, Any]]] = OrderedDict()
        self._computing: dict[tuple[Hashable, Token],
                              asyncio.Future[dict[str, Any] | None]] = {}
        self.hits = self.misses = 0

    async def compute(self, conn: AsyncConnection, q: stats.StatsQuery) -> dict[str, Any]:
        """stats.compute(conn, q), from memory while its inputs are unchanged (a copy: the
        caller may add figures to its blocks)."""
        return _copy(await self._compute(conn, q))

    async def _compute(self, conn: AsyncConnection, q: stats.StatsQuery) -> dict[str, Any]:
        if not (q.rollup and stats.rollup_answers(q, stats.offset_pieces(q.start, q.end, q.tz))):
            return await stats.compute(conn, q)
        now = await token(conn, q)
        key = _key(q)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == now:
            self._kept.move_to_end(key)
            self.hits += 1
            return kept[1]
        # Requests for the same figures while they are being computed wait for them.
        computing = self._computing.get((key, now))
        if computing is not None:
            done = await asyncio.shield(computing)
            if done is not None:  # None: that computation failed; try here
                self.hits += 1
                return done
        self.misses += 1
        computing = self._computing[(key, now)] = asyncio.get_running_loop().create_future()
        figures: dict[str, Any] | None = None
        try:
            figures = await stats.compute(conn, q)
        finally:
            if self._computing.get((key, now)) is computing:
                del self._computing[(key, now)]
            computing.set_result(figures)
        self._kept[key] = (now, figures)
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return figures
