"""A process's cache of stats figures, used while what they were counted from is unchanged.

A month by hour is 720 blocks of figures: even from the hourly rollup, adding
them up costs more Python than a page of calls, and desks ask for the same
few periods over and over. Only figures the rollup gives are cached (with
the API's rendering of them); each is kept with a token of its inputs, read
before it is computed and again on every request: the period's rollup rows,
their number and latest `changed_at`, one range read of an index (requests for
the same query that arrive while its token read still waits for a connection
share that read).

Every write that changes a period's figures stamps its hours' rows with
`changed_at` = now, in its own transaction: storing a call recomputes its
hour; setting a call's resolution or a follow-up's satisfaction recomputes
the call's hour; a worklist entry written by the writer or marked by hand
stamps the hour of its first miss (`rollup.touch`), which is where /stats
counts it. So an answer is never older than the request (a write committed
between the token and the computation only costs a recomputation on the
next request). On PostgreSQL `changed_at` is the database's clock read
under the rollup's lock, so it grows with every write whatever the writers'
hosts' clocks say.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store import fetch, resolution_stats, stats
from callhub.store.read_pool import Reader
from callhub.store.tables import call_hours

SIZE = 64  # queries kept (a month by hour is about 400 KB of figures)

Token = tuple[Any, ...]


def _token_statement(by_pbx: bool) -> sa.Select[Any]:
    """One round trip: the rollup rows' count and latest change in [lo, hi) (of one PBX),
    read from the index alone; built once, so each request only binds its values."""
    h = call_hours.c
    figures: list[sa.ColumnElement[Any]] = [sa.func.count(), sa.func.max(h.changed_at)]
    return sa.select(*figures).where(*stats.rollup_where(by_pbx))


_TOKEN = {by_pbx: _token_statement(by_pbx) for by_pbx in (False, True)}


async def token(conn: Reader, q: stats.StatsQuery) -> Token:
    """What the figures of `q` were counted from, in a few values."""
    (row,) = await fetch.rows(conn, _TOKEN[q.pbx is not None], stats.rollup_params(q))
    return tuple(row)


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


async def figures(source: stats.Source, q: stats.StatsQuery) -> dict[str, Any]:
    """Everything /stats counts: stats.compute's figures with the resolution and
    satisfaction figures added (both from the rollup when it answers; with
    `stats.Reads`, their statements at once)."""
    if isinstance(source, AsyncConnection):
        return await resolution_stats.compute_into(source, q, await stats.compute(source, q))
    result, extra = await asyncio.gather(
        stats.compute(source, q), source(lambda conn: resolution_stats.compute(conn, q)))
    return resolution_stats.add_to(result, extra)


@dataclass(slots=True)
class _TokenRead:
    """A token read waiting for its connection: requests for the same query that arrive
    before it is sent share it (its snapshot is then taken after they arrived)."""

    answer: asyncio.Future[Token | None]  # None: the read failed; read one of your own
    sent: bool = False


@dataclass(slots=True)
class _Kept:
    token: Token
    figures: dict[str, Any]
    body: bytes | None = None  # the figures as the API rendered them, once asked


class StatsCache:
    """`figures`, answered again from memory while the token holds; also their rendering."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._kept: OrderedDict[Hashable, _Kept] = OrderedDict()
        self._computing: dict[tuple[Hashable, Token], asyncio.Future[_Kept | None]] = {}
        self._reading: dict[Hashable, _TokenRead] = {}
        self.hits = self.misses = 0
        self.tokens_read = self.tokens_shared = 0

    async def compute(self, source: stats.Source, q: stats.StatsQuery) -> dict[str, Any]:
        """figures(source, q), from memory while its inputs are unchanged (a copy: the
        caller may change it)."""
        kept = await self._kept_for(source, q)
        return _copy(kept.figures) if kept is not None else await figures(source, q)

    async def rendered(self, source: stats.Source, q: stats.StatsQuery,
                       render: Callable[[dict[str, Any]], bytes]) -> bytes:
        """render(figures(source, q)), kept with the figures: a month by hour is half a
        megabyte of JSON, so an unchanged answer is sent as the bytes made last time.
        `render` must depend on nothing but the figures and `q`."""
        kept = await self._kept_for(source, q)
        if kept is None:
            return render(await figures(source, q))
        if kept.body is None:
            kept.body = render(kept.figures)
        return kept.body

    async def _token(self, source: stats.Source, q: stats.StatsQuery, key: Hashable
                     ) -> Token:
        """The token of `q`, read after this call began.

        At 20 clients a token read waits for one of the read pool's connections behind
        the others, and each is a round trip (its send was a third of the server's CPU
        on answers from memory, bench/README.md). A read for the same query still
        waiting, not yet sent, is shared: its snapshot is taken after this request
        arrived, so what it sees is as new as a read of this request's own."""
        waiting = self._reading.get(key)
        if waiting is not None and not waiting.sent:
            shared = await asyncio.shield(waiting.answer)
            if shared is not None:
                self.tokens_shared += 1
                return shared
        mine = self._reading[key] = _TokenRead(asyncio.get_running_loop().create_future())

        async def read(conn: Reader) -> Token:
            mine.sent = True  # from here on, newcomers read for themselves
            return await token(conn, q)

        found: Token | None = None
        try:
            found = await stats.run(source, read)
            self.tokens_read += 1
            return found
        finally:
            if self._reading.get(key) is mine:
                del self._reading[key]
            mine.answer.set_result(found)

    async def _kept_for(self, source: stats.Source, q: stats.StatsQuery) -> _Kept | None:
        """The kept figures of `q`, computed if its inputs changed; None when the rollup
        does not answer `q` (nothing then to check a cached answer against)."""
        if not (q.rollup and stats.rollup_answers(q, stats.offset_pieces(q.start, q.end, q.tz))):
            return None
        key = _key(q)
        now = await self._token(source, q, key)
        kept = self._kept.get(key)
        if kept is not None and kept.token == now:
            self._kept.move_to_end(key)
            self.hits += 1
            return kept
        # Requests for the same figures while they are being computed wait for them.
        computing = self._computing.get((key, now))
        if computing is not None:
            done = await asyncio.shield(computing)
            if done is not None:  # None: that computation failed; try here
                self.hits += 1
                return done
        self.misses += 1
        computing = self._computing[(key, now)] = asyncio.get_running_loop().create_future()
        fresh: _Kept | None = None
        try:
            fresh = _Kept(now, await figures(source, q))
        finally:
            if self._computing.get((key, now)) is computing:
                del self._computing[(key, now)]
            computing.set_result(fresh)
        self._kept[key] = fresh
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return fresh
