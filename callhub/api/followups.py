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
from typing import Any

from aiohttp import web

from callhub.api.base import (
    DB,
    ID_PARAM,
    SETTINGS,
    Operation,
    cursor_offset,
    error_response,
    json_body,
    json_response,
    offset_cursor,
    path_int,
)
from callhub.api.params import BadParameter, Param, parse_datetime, parse_query
from callhub.config import ConfigError, parse_duration
from callhub.store import followups as store

Clock = Callable[[], float]
FOLLOWUP_CLOCK: web.AppKey[Clock] = web.AppKey("followup_clock", Clock)  # type: ignore[arg-type]
MAX_DUE = 20
MAX_TEXT = 4000
MAX_LIMIT = 1000
MAX_AHEAD = timedelta(days=366)

LIST_PARAMS: tuple[Param, ...] = (
    Param("status", "string", "Only follow-ups with this status (default: all, open first).",
          enum=store.STATUSES),
    Param("due", "string", "`yes`: open ones due by now; `no`: open ones not yet due.",
          enum=("yes", "no")),
    Param("number", "string", "Only follow-ups to this number."),
    Param("limit", "integer", "Follow-ups per page.", minimum=1, maximum=MAX_LIMIT,
          default=100),
    Param("cursor", "string", "`next_cursor` of the previous page.", max_length=40),
)


def now_of(app: web.Application) -> datetime:
    clock = app.get(FOLLOWUP_CLOCK, time.time)
    return datetime.fromtimestamp(clock(), UTC)


def followup_json(row: dict[str, Any], now: datetime, overdue_seconds: float) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "updated_at"}
    out["due"] = row["status"] == "open" and row["due_at"] <= now
    out["overdue"] = store.overdue(row, now, overdue_seconds)
    return out


def _text(body: dict[str, Any], key: str) -> str | None:
    value: str | None = body.get(key)
    if value is not None and not value.strip():
        raise BadParameter(key, "must not be blank")
    if value is not None and len(value) > MAX_TEXT:
        raise BadParameter(key, f"longer than {MAX_TEXT} characters")
    return value


def _due_times(body: dict[str, Any], request: web.Request, now: datetime,
               call_ended: datetime | None) -> list[datetime]:
    """`due` (absolute times) or `after` (delays after the call ended) to due times."""
    settings = request.app[SETTINGS]
    out: list[datetime] = []
    for key in ("due", "after"):
        items = body.get(key)
        if items is None:
            continue
        if not items or len(items) > MAX_DUE:
            raise BadParameter(key, f"give 1 to {MAX_DUE} items")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise BadParameter(f"{key}[{i}]", "must be a string")
            if key == "due":
                at = parse_datetime(f"due[{i}]", item, settings.tz)
            else:
                try:
                    seconds = parse_duration(item, f"after[{i}]")
                except ConfigError as exc:
                    name, _, why = str(exc).partition(": ")
                    raise BadParameter(name, why) from None
                assert call_ended is not None
                at = call_ended + timedelta(seconds=seconds)
            if at > now + MAX_AHEAD:
                raise BadParameter(f"{key}[{i}]", "more than a year ahead")
            out.append(at)
    return out


async def create_followups(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    parse_query(request.query, (), settings.tz)
    call_id = path_int(request, "id")
    body = await json_body(request, {"due": list, "after": list, "from_rule": bool,
                                     "who": str, "note": str})
    given = [k for k in ("due", "after", "from_rule") if body.get(k) not in (None, False)]
    if len(given) != 1:
        raise BadParameter("body", "give exactly one of due (times), after (delays after "
                                   "the call, e.g. \"24h\") or from_rule (true)")
    who, note = _text(body, "who"), _text(body, "note")
    now = now_of(app)
    try:
        async with app[DB].begin() as conn:
            if body.get("from_rule"):
                ids = await store.apply_rule(conn, call_id, settings, now=now)
            else:
                ended = await _call_ended(conn, call_id)
                due = _due_times(body, request, now, ended)
                ids = await store.create(conn, call_id, due, now=now, who=who, note=note)
            rows = [await store.get_followup(conn, i) for i in ids]
    except store.FollowupError as exc:
        return _error(exc)
    items = [followup_json(r, now, settings.followup_overdue_seconds) for r in rows if r]
    return json_response({"items": items}, status=201)


async def _call_ended(conn: Any, call_id: int) -> datetime:
    call = await store.call_info(conn, call_id)
    ended: datetime = call.ended_at
    return ended


def _error(exc: store.FollowupError) -> web.Response:
    kind = {404: "not_found", 409: "conflict"}.get(exc.status, "bad_request")
    return error_response(exc.status, kind, str(exc))


async def call_followups(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    parse_query(request.query, (), settings.tz)
    call_id = path_int(request, "id")
    now = now_of(request.app)
    try:
        async with request.app[DB].connection() as conn:
            await store.call_info(conn, call_id)
            rows = await store.list_followups(conn, store.FollowupFilter(call_id=call_id),
                                              limit=MAX_LIMIT)
    except store.FollowupError as exc:
        return _error(exc)
    return json_response({"items": [followup_json(r, now, settings.followup_overdue_seconds)
                                    for r in rows]})


async def list_followups(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    args = parse_query(request.query, LIST_PARAMS, settings.tz)
    now = now_of(request.app)
    offset = cursor_offset("f", args["cursor"]) if args["cursor"] is not None else 0
    limit = int(args["limit"])
    status = args["status"]
    if args["due"] is not None:
        if status not in (None, "open"):
            raise BadParameter("due", "only open follow-ups are due or not (drop status)")
        status = "open"
    flt = store.FollowupFilter(status=status, number=args["number"],
                               due_by=now if args["due"] == "yes" else None,
                               due_after=now if args["due"] == "no" else None)
    async with request.app[DB].connection() as conn:
        rows = await store.list_followups(conn, flt, limit=limit + 1, offset=offset)
    return json_response({
        "items": [followup_json(r, now, settings.followup_overdue_seconds)
                  for r in rows[:limit]],
        "next_cursor": offset_cursor("f", offset + limit) if len(rows) > limit else None,
    })


async def _close(request: web.Request, status: str) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    parse_query(request.query, (), settings.tz)
    followup_id = path_int(request, "id")
    body = await json_body(request, {"who": str, "note": str})
    who, note = _text(body, "who"), _text(body, "note")
    now = now_of(request.app)
    try:
        async with request.app[DB].begin() as conn:
            await store.close(conn, followup_id, status, now=now, who=who, note=note)
            row = await store.get_followup(conn, followup_id)
    except store.FollowupError as exc:
        return _error(exc)
    assert row is not None
    return json_response(followup_json(row, now, settings.followup_overdue_seconds))


async def mark_done(request: web.Request) -> web.StreamResponse:
    return await _close(request, "done")


async def cancel(request: web.Request) -> web.StreamResponse:
    return await _close(request, "cancelled")


NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
FOLLOWUP_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["id", "call_id", "number", "due_at", "status"],
    "properties": {
        "id": {"type": "integer"}, "call_id": {"type": "integer"}, "pbx": {"type": "string"},
        "number": {"type": "string"}, "due_at": {"type": "string", "format": "date-time"},
        "status": {"type": "string", "enum": list(store.STATUSES)},
        "source": {"type": "string", "enum": list(store.SOURCES)},
        "category": NULLABLE_STRING, "created_at": {"type": "string", "format": "date-time"},
        "created_by": NULLABLE_STRING, "closed_at": NULLABLE_TIME, "closed_by": NULLABLE_STRING,
        "how": {"type": ["string", "null"], "enum": [*store.HOWS, None]},
        "closed_call_id": {"type": ["integer", "null"]}, "note": NULLABLE_STRING,
        "caller_name": NULLABLE_STRING, "line": NULLABLE_STRING,
        "call_arrived_at": {"type": "string", "format": "date-time"},
        "call_category": NULLABLE_STRING,
        "due": {"type": "boolean", "description": "Open and due by now."},
        "overdue": {"type": "boolean",
                    "description": "Open longer than [followups] overdue_after past due."},
    }}
ITEMS = {"type": "object", "required": ["items"], "properties": {
    "items": {"type": "array", "items": FOLLOWUP_SCHEMA},
    "next_cursor": {"type": ["string", "null"]}}}
NOT_FOUND = {"$ref": "#/components/responses/NotFound"}
CLOSE_BODY = {"type": "object", "additionalProperties": False,
              "properties": {"who": {"type": ["string", "null"]},
                             "note": {"type": ["string", "null"], "maxLength": MAX_TEXT}}}
CLOSE_RESPONSES = {
    "200": {"description": "The follow-up after the change.",
            "content": {"application/json": {"schema": FOLLOWUP_SCHEMA}}},
    "404": NOT_FOUND,
    "409": {"description": "The follow-up is no longer open.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
}

OPERATIONS = (
    Operation("POST", "/api/v1/calls/{id}/followups", create_followups, "supervisor",
              "Give a call follow-up calls: at times (`due`), after delays from the call's "
              "end (`after`: [\"24h\", \"2d\"]) or by its category's rule (`from_rule`).",
              "followups", path_params=(ID_PARAM,),
              body={"type": "object", "additionalProperties": False, "properties": {
                  "due": {"type": "array", "maxItems": MAX_DUE,
                          "items": {"type": "string", "format": "date-time"}},
                  "after": {"type": "array", "maxItems": MAX_DUE,
                            "items": {"type": "string", "example": "24h"}},
                  "from_rule": {"type": "boolean"},
                  "who": {"type": ["string", "null"]},
                  "note": {"type": ["string", "null"], "maxLength": MAX_TEXT}}},
              responses={"201": {"description": "The follow-ups created (none when the rule "
                                                "had nothing to add).",
                                 "content": {"application/json": {"schema": ITEMS}}},
                         "404": NOT_FOUND}),
    Operation("GET", "/api/v1/calls/{id}/followups", call_followups, "supervisor",
              "A call's follow-ups, open first, by due time.", "followups",
              path_params=(ID_PARAM,),
              responses={"200": {"description": "The call's follow-ups.",
                                 "content": {"application/json": {"schema": ITEMS}}},
                         "404": NOT_FOUND}),
    Operation("GET", "/api/v1/followups", list_followups, "supervisor",
              "Follow-up calls, open first, by due time; `due=yes` for the ones to make now.",
              "followups", query=LIST_PARAMS,
              responses={"200": {"description": "A page of follow-ups.",
                                 "content": {"application/json": {"schema": ITEMS}}}}),
    Operation("POST", "/api/v1/followups/{id}/done", mark_done, "supervisor",
              "Close an open follow-up by hand (how=manual).", "followups",
              path_params=(ID_PARAM,), body=CLOSE_BODY, responses=CLOSE_RESPONSES),
    Operation("POST", "/api/v1/followups/{id}/cancel", cancel, "supervisor",
              "Cancel an open follow-up (no call needed).", "followups",
              path_params=(ID_PARAM,), body=CLOSE_BODY, responses=CLOSE_RESPONSES),
)
