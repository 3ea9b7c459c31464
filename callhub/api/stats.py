"""GET /stats: the desk's figures over a period, optionally per hour, day, agent or line."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from aiohttp import web

from callhub.api.base import DB, SETTINGS, Operation, json_response
from callhub.api.params import BadParameter, Param, parse_query
from callhub.store import stats
from callhub.store.stats import FIGURES_DOC

MAX_DAYS = 400

STATS_PARAMS: tuple[Param, ...] = (
    Param("from", "datetime", "Start of the period (default: today 00:00 in the configured "
          "time zone)."),
    Param("to", "datetime", "End of the period, exclusive (default: from + 1 day)."),
    Param("group_by", "string", "One block of figures per hour, day, agent or line.",
          enum=stats.GROUPS),
    Param("rings", "integer", "N of the answer-within-N-rings rates.", minimum=1,
          maximum=100, default=3),
    Param("seconds", "number", "T of the within-T-seconds service level (caller's wait).",
          minimum=0, maximum=86400, default=20),
    Param("pbx", "string", "Only this PBX."),
)


async def get_stats(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    tz = settings.tz
    args = parse_query(request.query, STATS_PARAMS, tz)
    start = args["from"]
    if start is None:
        start = datetime.combine(datetime.now(tz).date(), time(), tzinfo=tz)
    end = args["to"] if args["to"] is not None else start + timedelta(days=1)
    if end <= start:
        raise BadParameter("to", "must be later than from")
    if end - start > timedelta(days=MAX_DAYS):
        raise BadParameter("to", f"the period may span at most {MAX_DAYS} days")
    q = stats.StatsQuery(start=start, end=end, group_by=args["group_by"],
                         rings=int(args["rings"]), seconds=float(args["seconds"]),
                         exclude_short_abandons=settings.stats_exclude_short_abandons,
                         tz=tz, pbx=args["pbx"])
    async with request.app[DB].connection() as conn:
        figures = await stats.compute(conn, q)
    return json_response({
        "from": start, "to": end, "group_by": q.group_by, "rings": q.rings,
        "seconds": q.seconds, "short_abandons_excluded": q.exclude_short_abandons,
        **figures,
    })


def figures_schema() -> dict[str, object]:
    props: dict[str, object] = {
        name: {"type": ["number", "null"] if "rate" in name or "level" in name
               or name.startswith(("avg", "p90", "median")) else "integer",
               "description": text}
        for name, text in FIGURES_DOC.items()
    }
    return {"type": "object", "properties": props}


OPERATIONS = (
    Operation("GET", "/api/v1/stats", get_stats, "viewer",
              "Answer rates, rings, service level, abandons and callbacks over a period.",
              "stats", query=STATS_PARAMS,
              responses={"200": {"description": "Totals, and groups with group_by.",
                                 "content": {"application/json": {"schema": {
                                     "type": "object", "properties": {
                                         "totals": {"$ref": "#/components/schemas/Figures"},
                                         "groups": {"type": "array", "items": {
                                             "$ref": "#/components/schemas/Figures"}}}}}}}}),
)
