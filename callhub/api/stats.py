"""GET /stats: the desk's figures over a period, optionally per hour, day, agent or line."""

from __future__ import annotations

import weakref
from datetime import datetime, time, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import Field

from callhub.api.base import DB, SETTINGS, Operation, Reply, encode, query_of, reply_encoded
from callhub.api.params import BadParameter, Filter, Moment, Query
from callhub.api.schemas import Stats
from callhub.store import stats
from callhub.store.db import Database
from callhub.store.stats_cache import StatsCache

MAX_DAYS = 400

# One cache of figures per database this process serves (callhub/store/stats_cache.py).
_CACHES: weakref.WeakKeyDictionary[Database, StatsCache] = weakref.WeakKeyDictionary()


def cache_of(db: Database) -> StatsCache:
    cache = _CACHES.get(db)
    if cache is None:
        cache = _CACHES[db] = StatsCache()
    return cache


class StatsQuery(Query):
    start: Moment | None = Field(None, alias="from", description=(
        "Start of the period (default: today 00:00 in the configured time zone)."))
    to: Moment | None = Field(None, description="End of the period, exclusive (default: "
                                                "from + 1 day).")
    group_by: Literal[stats.GROUPS] | None = Field(  # type: ignore[valid-type]
        None, description="One block of figures per hour, day, agent or line.")
    rings: int = Field(3, ge=1, le=100, description=(
        "N of the answer-within-N-rings rates, the same for every line (each line's own "
        "target is in line_targets and answered_within_target)."))
    seconds: float = Field(20, ge=0, le=86400, allow_inf_nan=False, description=(
        "T of the within-T-seconds service level (caller's wait)."))
    pbx: Filter | None = Field(None, description="Only this PBX.")


async def get_stats(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    tz = settings.tz
    args = query_of(request, StatsQuery)
    start = args.start
    if start is None:
        start = datetime.combine(datetime.now(tz).date(), time(), tzinfo=tz)
    end = args.to if args.to is not None else start + timedelta(days=1)
    if end <= start:
        raise BadParameter("to", "must be later than from")
    if end - start > timedelta(days=MAX_DAYS):
        raise BadParameter("to", f"the period may span at most {MAX_DAYS} days")
    q = stats.StatsQuery(start=start, end=end, group_by=args.group_by, rings=args.rings,
                         rollup=True,
                         seconds=args.seconds,
                         exclude_short_abandons=settings.stats_exclude_short_abandons,
                         tz=tz, pbx=args.pbx, targets=settings.line_targets(args.pbx))
    db = request.app[DB]

    def render(figures: dict[str, Any]) -> bytes:
        return encode({
            "from": start, "to": end, "group_by": q.group_by, "rings": q.rings,
            "seconds": q.seconds, "short_abandons_excluded": q.exclude_short_abandons,
            **figures,
        })

    cache = cache_of(db)
    if stats.rollup_answers(q, stats.offset_pieces(q.start, q.end, q.tz)):
        # From the rollup: single statements on the read pool, each one round trip, the
        # independent ones at once.
        body = await cache.rendered(db.read, q, render)
    else:  # counted from the calls: one transaction, with its own sort memory
        body = await db.query(lambda conn: cache.rendered(conn, q, render), counting=True)
    return reply_encoded(request, body)


OPERATIONS = (
    Operation("GET", "/api/v1/stats", get_stats, "viewer",
              "Answer rates, rings, service level, abandons and callbacks over a period; "
              "each line's calls against its own ring and answer-rate targets; "
              "resolution rate (resolved / calls with a resolution set) and satisfaction "
              "rate (satisfied / follow-ups answered satisfied, fair or dissatisfied).",
              "stats", query=StatsQuery,
              responses={"200": Reply("Totals, and groups with group_by.", Stats)}),
)
