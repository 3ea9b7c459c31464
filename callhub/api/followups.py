"""Follow-up calls over HTTP: give a call follow-ups, list the due ones, close them.

`OPERATIONS` goes into `make_app(..., extra_operations=...)`, so the routes
get the API's role check, JSON errors and OpenAPI entries. The app may carry
a clock under `FOLLOWUP_CLOCK` (tests inject one); it decides what is due
and overdue and stamps changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.api import cursors
from callhub.api.auth import ROLE
from callhub.api.base import (
    DB,
    SETTINGS,
    Operation,
    Reply,
    body_of,
    path_of,
    query_of,
    reply,
)
from callhub.api.params import (
    BadParameter,
    Body,
    Filter,
    NoQuery,
    Note,
    Path,
    Query,
    Who,
    parse_datetime,
)
from callhub.api.schemas import ErrorBody, Followup, FollowupList, Resolution, Satisfaction
from callhub.config import ConfigError, parse_duration
from callhub.store import followups as store
from callhub.store import resolution as rating

Clock = Callable[[], float]
FOLLOWUP_CLOCK: web.AppKey[Clock] = web.AppKey("followup_clock", Clock)  # type: ignore[arg-type]
MAX_DUE = 20
MAX_LIMIT = 1000
MAX_AHEAD = timedelta(days=366)
MAX_ID = 2**31 - 1



class FollowupQuery(Query):
    status: Literal["open", "done", "cancelled"] | None = Field(
        None, description="Only follow-ups with this status (default: all, open first).")
    due: Literal["yes", "no"] | None = Field(
        None, description="`yes`: open ones due by now; `no`: open ones not yet due.")
    number: Filter | None = Field(None, description="Only follow-ups to this number.")
    limit: int = Field(100, ge=1, le=MAX_LIMIT, description="Follow-ups per page.")
    cursor: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="`next_cursor` of the previous page.")


class CallId(Path):
    id: int = Field(ge=1, le=MAX_ID, description="The call's numeric id.")


class FollowupId(Path):
    id: int = Field(ge=1, le=MAX_ID, description="The follow-up's numeric id.")


class NewFollowups(Body):
    """Exactly one of `due`, `after` or `from_rule`; who asked and a note."""

    due: Annotated[list[str], Field(min_length=1, max_length=MAX_DUE, description=(
        "ISO 8601 times (without an offset: local time)."), examples=[["2026-12-01T09:00"]])
                   ] | None = None
    after: Annotated[list[str], Field(min_length=1, max_length=MAX_DUE, description=(
        "Delays after the call ended."), examples=[["24h", "2d"]])] | None = None
    from_rule: bool | None = Field(None, description="true: the call's category's rule.")
    who: Who | None = None
    note: Note | None = None


class Closing(Body):
    """Who closed it, and a note."""

    who: Who | None = None
    note: Note | None = None


class Completing(Closing):
    """Who closed it, a note, and what the follow-up call found."""

    outcome: Resolution | None = Field(None, description=(
        "The caller's matter as they tell it: resolved, referred, pending or unresolved."))
    satisfaction: Satisfaction | None = Field(None, description=(
        "satisfied, fair, dissatisfied, or unreachable (the caller was not reached)."))


class Rating(Body):
    """What a done follow-up found (one closed by a callback has nothing recorded yet)."""

    outcome: Resolution | None = Field(None, description=(
        "resolved, referred, pending or unresolved."))
    satisfaction: Satisfaction | None = Field(None, description=(
        "satisfied, fair, dissatisfied or unreachable."))
    note: Note | None = None
    who: Who | None = None


def now_of(app: web.Application) -> datetime:
    clock = app.get(FOLLOWUP_CLOCK, time.time)
    return datetime.fromtimestamp(clock(), UTC)


def followup_json(row: dict[str, Any], now: datetime, overdue_seconds: float) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "updated_at"}
    out["due"] = row["status"] == "open" and row["due_at"] <= now
    out["overdue"] = store.overdue(row, now, overdue_seconds)
    return out


def _text(key: str, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise BadParameter(key, "must not be blank")
    return value


def _due_times(body: NewFollowups, request: web.Request, now: datetime,
               call_ended: datetime | None) -> list[datetime]:
    """`due` (absolute times) or `after` (delays after the call ended) to due times."""
    settings = request.app[SETTINGS]
    out: list[datetime] = []
    for key, items in (("due", body.due), ("after", body.after)):
        if items is None:
            continue
        for i, item in enumerate(items):
            if key == "due":
                at = parse_datetime(f"due[{i}]", item, settings.tz)
            else:
                try:
                    seconds = parse_duration(item, f"after[{i}]")
                except ConfigError as exc:
                    name, _, why = str(exc).partition(": ")
                    raise BadParameter(name, why) from None
                assert call_ended is not None
                if seconds > MAX_AHEAD.total_seconds():  # before timedelta overflows
                    raise BadParameter(f"{key}[{i}]", "more than a year ahead")
                at = call_ended + timedelta(seconds=seconds)
            if at > now + MAX_AHEAD:
                raise BadParameter(f"{key}[{i}]", "more than a year ahead")
            out.append(at)
    return out


async def create_followups(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    call_id = path_of(request, CallId).id
    body = body_of(request, NewFollowups)
    given = [k for k, v in (("due", body.due), ("after", body.after),
                            ("from_rule", body.from_rule)) if v not in (None, False)]
    if len(given) != 1:
        raise BadParameter("body", "give exactly one of due (times), after (delays after "
                                   "the call, e.g. \"24h\") or from_rule (true)")
    who, note = _text("who", body.who), _text("note", body.note)
    now = now_of(app)

    async def create(conn: AsyncConnection) -> list[dict[str, Any] | None]:
        if body.from_rule:
            ids = await store.apply_rule(conn, call_id, settings, now=now)
        else:
            ended = await _call_ended(conn, call_id)
            due = _due_times(body, request, now, ended)
            ids = await store.create(conn, call_id, due, now=now, who=who, note=note)
        return [await store.get_followup(conn, i) for i in ids]

    rows = await app[DB].change(create)
    items = [followup_json(r, now, settings.followup_overdue_seconds) for r in rows if r]
    return reply(request, {"items": items}, status=201)


async def _call_ended(conn: Any, call_id: int) -> datetime:
    call = await store.call_info(conn, call_id)
    ended: datetime = call.ended_at
    return ended


async def call_followups(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    call_id = path_of(request, CallId).id
    now = now_of(request.app)

    async def of_call(conn: AsyncConnection) -> list[dict[str, Any]]:
        await store.call_info(conn, call_id)
        return await store.list_followups(conn, store.FollowupFilter(call_id=call_id),
                                          limit=MAX_LIMIT)

    rows = await request.app[DB].query(of_call)
    return reply(request, {"items": [followup_json(r, now, settings.followup_overdue_seconds)
                                    for r in rows]})


async def list_followups(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    args = query_of(request, FollowupQuery)
    now = now_of(request.app)
    after = None
    if args.cursor is not None:
        rank, at, followup_id = cursors.FOLLOWUPS.decode(args.cursor)
        after = store.FollowupPosition(rank, cursors.moment(at), followup_id)
    limit = args.limit
    status = args.status
    if args.due is not None:
        if status not in (None, "open"):
            raise BadParameter("due", "only open follow-ups are due or not (drop status)")
        status = "open"
    flt = store.FollowupFilter(status=status, number=args.number,
                               due_by=now if args.due == "yes" else None,
                               due_after=now if args.due == "no" else None)
    rows = await request.app[DB].query(
        lambda conn: store.list_followups(conn, flt, limit=limit + 1, after=after))
    next_cursor = None
    if len(rows) > limit:
        last = store.position_of(rows[limit - 1])
        next_cursor = cursors.FOLLOWUPS.encode(last.rank, cursors.micros(last.due_at), last.id)
    return reply(request, {
        "items": [followup_json(r, now, settings.followup_overdue_seconds)
                  for r in rows[:limit]],
        "next_cursor": next_cursor,
    })


async def _close(request: web.Request, status: str) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    followup_id = path_of(request, FollowupId).id
    body = body_of(request, Completing if status == "done" else Closing)
    who, note = _text("who", body.who), _text("note", body.note)
    found = ((body.outcome, body.satisfaction) if isinstance(body, Completing)
             else (None, None))
    now = now_of(request.app)

    async def close(conn: AsyncConnection) -> dict[str, Any] | None:
        await store.close(conn, followup_id, status, now=now, who=who, note=note,
                          outcome=found[0], satisfaction=found[1],
                          rated_by=_by(request, who))
        return await store.get_followup(conn, followup_id)

    row = await request.app[DB].change(close)
    assert row is not None
    return reply(request, followup_json(row, now, settings.followup_overdue_seconds))


def _by(request: web.Request, who: str | None) -> str:
    """Who recorded it: the token's role, after the name the client gave."""
    role = request[ROLE]
    return f"{who.strip()} ({role})" if who is not None else role


async def mark_done(request: web.Request) -> web.StreamResponse:
    return await _close(request, "done")


async def rate(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    followup_id = path_of(request, FollowupId).id
    body = body_of(request, Rating)
    if body.outcome is None and body.satisfaction is None and body.note is None:
        raise BadParameter("body", "give outcome, satisfaction and/or note")
    who, note = _text("who", body.who), _text("note", body.note)
    who = _by(request, who)
    now = now_of(request.app)

    async def record(conn: AsyncConnection) -> dict[str, Any] | None:
        await rating.rate_followup(conn, followup_id, outcome=body.outcome,
                                   satisfaction=body.satisfaction, note=note, now=now, who=who)
        return await store.get_followup(conn, followup_id)

    row = await request.app[DB].change(record)
    assert row is not None
    return reply(request, followup_json(row, now, settings.followup_overdue_seconds))


async def cancel(request: web.Request) -> web.StreamResponse:
    return await _close(request, "cancelled")


NOT_FOUND = Reply("No such call or follow-up.", ErrorBody)
CLOSE_RESPONSES = {
    "200": Reply("The follow-up after the change.", Followup),
    "404": NOT_FOUND,
    "409": Reply("The follow-up is no longer open.", ErrorBody),
}

OPERATIONS = (
    Operation("POST", "/api/v1/calls/{id}/followups", create_followups, "supervisor",
              "Give a call follow-up calls: at times (`due`), after delays from the call's "
              "end (`after`: [\"24h\", \"2d\"]) or by its category's rule (`from_rule`).",
              "followups", query=NoQuery, path_params=CallId, body=NewFollowups,
              responses={"201": Reply("The follow-ups created (none when the rule had "
                                      "nothing to add).", FollowupList),
                         "404": NOT_FOUND}),
    Operation("GET", "/api/v1/calls/{id}/followups", call_followups, "supervisor",
              "A call's follow-ups, open first, by due time.", "followups",
              query=NoQuery, path_params=CallId,
              responses={"200": Reply("The call's follow-ups.", FollowupList),
                         "404": NOT_FOUND}),
    Operation("GET", "/api/v1/followups", list_followups, "supervisor",
              "Follow-up calls, open first, by due time; `due=yes` for the ones to make now.",
              "followups", query=FollowupQuery,
              responses={"200": Reply("A page of follow-ups.", FollowupList)}),
    Operation("POST", "/api/v1/followups/{id}/done", mark_done, "supervisor",
              "Close an open follow-up by hand (how=manual), with what it found: the "
              "matter's `outcome` and the caller's `satisfaction`.", "followups",
              query=NoQuery, path_params=FollowupId, body=Completing,
              responses=CLOSE_RESPONSES),
    Operation("PATCH", "/api/v1/followups/{id}", rate, "supervisor",
              "Record what a done follow-up found (outcome, satisfaction, note), e.g. one "
              "a callback closed; recorded with who and when.", "followups",
              query=NoQuery, path_params=FollowupId, body=Rating,
              responses={"200": Reply("The follow-up after the change.", Followup),
                         "404": NOT_FOUND,
                         "409": Reply("The follow-up is open or cancelled, not done.",
                                      ErrorBody)}),
    Operation("POST", "/api/v1/followups/{id}/cancel", cancel, "supervisor",
              "Cancel an open follow-up (no call needed).", "followups",
              query=NoQuery, path_params=FollowupId, body=Closing, responses=CLOSE_RESPONSES),
)
