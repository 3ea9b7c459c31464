"""GET /calls (search, keyset pages, CSV), GET /calls/{id}, PATCH /calls/{id}."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.api import csv_export, cursors
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
    Moment,
    NoQuery,
    Note,
    Path,
    Query,
    Text,
    Who,
)
from callhub.api.schemas import Call, CallPage, Direction, ErrorBody, Outcome, Reason, Resolution
from callhub.records import RecordSource
from callhub.store import queries
from callhub.store.errors import NotFound
from callhub.store.resolution import MAX_DEPARTMENT, RESOLUTIONS, set_resolution

MAX_LIMIT = 500
MAX_ID = 2**31 - 1

Status = Literal["pending", "handled", "dismissed"]
ResolutionFilter = Literal[(*RESOLUTIONS, queries.NO_RESOLUTION)]  # type: ignore[valid-type]


class CallFilters(Query):
    """Every filter of GET /calls; absent: not filtered."""

    start: Moment | None = Field(None, alias="from", description=(
        "Calls that arrived at or after this time (ISO 8601; without an offset, in the "
        "configured time zone)."))
    to: Moment | None = Field(None, description="Calls that arrived before this time.")
    direction: Direction | None = Field(None, description="inbound, outbound or internal.")
    outcome: Outcome | None = Field(None, description="The call's outcome.")
    reason: Reason | None = Field(None, description="Why an unanswered call was lost.")
    line: Filter | None = Field(None, description="The line (configured name of the DID, "
                                                  "else the DID).")
    did: Filter | None = Field(None, description="The dialled number of inbound calls.")
    agent: Filter | None = Field(None, description="The agent's device interface (PJSIP/1001) "
                                                   "or name.")
    caller_number: Filter | None = Field(None, description="The calling number exactly.")
    number: Filter | None = Field(None, description=(
        "The outside party's number: the caller of an inbound call, the dialled number of "
        "an outbound one."))
    min_rings: Annotated[int, Field(ge=0, le=1000)] | None = Field(
        None, description="Calls that rang at least this many rings.")
    worklist_status: Status | None = Field(None, description="Calls listed on a worklist "
                                                             "entry with this status.")
    pbx: Filter | None = Field(None, description="The PBX name.")
    resolution: ResolutionFilter | None = Field(None, description=(
        "Calls with this resolution; `none`: no resolution set yet (with `pending`, the "
        "matters still open)."))
    source: RecordSource | None = Field(None, description=(
        "`ami` (seen live) or `cel` (rebuilt from Asterisk's CEL for a gap)."))


class CallSearch(CallFilters):
    """GET /calls: the filters and the page."""

    limit: int = Field(50, ge=1, le=MAX_LIMIT, description="Calls per page.")
    cursor: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="`next_cursor` of the previous page.")
    format: Literal["json", "csv"] | None = Field(
        None, description="`csv` for a CSV file of every matching call (UTF-8 with BOM).")


class CallId(Path):
    id: int = Field(ge=1, le=MAX_ID, description="The call's numeric id.")


class CallPatch(Body):
    """PATCH /calls/{id}: category (from the configured list), note and/or resolution;
    null clears. Setting a resolution records who (the token's role, after `who`) and when."""

    category: Text | None = None
    note: Note | None = None
    resolution: Resolution | None = Field(None, description=(
        "resolved, referred (give `department`), pending or unresolved; null clears it."))
    department: Annotated[Text, Field(min_length=1, max_length=MAX_DEPARTMENT)] | None = Field(
        None, description="With resolution `referred` only: the department it went to.")
    who: Annotated[Who, Field(min_length=1)] | None = Field(
        None, description="With a resolution: the name of who set it (recorded before the "
                          "token's role).")


def call_filter(args: CallFilters) -> queries.CallFilter:
    if args.start is not None and args.to is not None and args.start >= args.to:
        raise BadParameter("to", "must be later than from")
    return queries.CallFilter(
        start=args.start, end=args.to, direction=args.direction, outcome=args.outcome,
        reason=args.reason, line=args.line, did=args.did, agent=args.agent,
        caller_number=args.caller_number, number=args.number, min_rings=args.min_rings,
        worklist_status=args.worklist_status, pbx=args.pbx, resolution=args.resolution,
        source=args.source)


def call_json(row: dict[str, Any]) -> dict[str, Any]:
    """A calls row as the API shows it, made of the row itself (three keys dropped, one
    added: per row, cheaper than a copy or picking the other thirty-odd)."""
    out = row
    worklist_id = out.pop("worklist_id", None)
    status = out.pop("worklist_status", None)
    out.pop("updated_at", None)
    out["worklist"] = {"id": worklist_id, "status": status} if worklist_id is not None else None
    return out


def wants_csv(request: web.Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept


async def list_calls(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    args = query_of(request, CallSearch)
    f = call_filter(args)
    after = None
    if args.cursor is not None:
        at, last_id = cursors.CALLS.decode(args.cursor)
        after = (cursors.moment(at), last_id)
    db = request.app[DB]
    if wants_csv(request, args.format):
        return await csv_export.stream_calls(request, db, f, after, settings.tz)
    rows = await db.read(lambda conn: queries.list_calls(conn, f, args.limit + 1, after))
    next_cursor = None
    if len(rows) > args.limit:
        last = rows[args.limit - 1]
        next_cursor = cursors.CALLS.encode(cursors.micros(last["arrived_at"]), last["id"])
    return reply(request, {"items": [call_json(r) for r in rows[:args.limit]],
                           "next_cursor": next_cursor})


async def get_call(request: web.Request) -> web.StreamResponse:
    call_id = path_of(request, CallId).id
    row = await request.app[DB].query(lambda conn: queries.get_call(conn, call_id))
    if row is None:
        return reply(request, {"error": "not_found", "message": f"no call {call_id}"}, 404)
    return reply(request, call_json(row))


def _resolution_of(body: CallPatch, given: set[str]) -> tuple[str | None, str | None] | None:
    """(resolution, department) when the body sets or clears the resolution, else None."""
    if "resolution" not in given:
        for key in ("department", "who"):
            if key in given:
                raise BadParameter(key, "goes with resolution")
        return None
    department = body.department.strip() if body.department is not None else None
    if body.resolution == "referred" and not department:
        raise BadParameter("department", "give the department a referred matter went to")
    if body.resolution != "referred" and "department" in given and body.department is not None:
        raise BadParameter("department", "only a referred matter has a department")
    if body.who is not None and not body.who.strip():
        raise BadParameter("who", "must not be blank")
    return body.resolution, department


async def patch_call(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    call_id = path_of(request, CallId).id
    body = body_of(request, CallPatch)
    values = body.model_dump(exclude_unset=True)
    if not values:
        raise BadParameter("body", "give category, note and/or resolution")
    if body.category is not None and body.category not in settings.categories:
        raise BadParameter("category", f"must be one of {', '.join(settings.categories)}")
    resolution = _resolution_of(body, set(values))
    for key in ("resolution", "department", "who"):
        values.pop(key, None)
    role = request[ROLE]
    who = f"{body.who.strip()} ({role})" if body.who is not None else role

    async def patch(conn: AsyncConnection) -> dict[str, Any] | None:
        found = True
        if values:
            found = await queries.update_call(conn, call_id, values)
        if found and resolution is not None:
            try:
                await set_resolution(conn, call_id, *resolution, now=datetime.now(UTC),
                                     who=who)
            except NotFound:
                found = False
        return await queries.get_call(conn, call_id) if found else None

    row = await request.app[DB].change(patch)
    if row is None:
        return reply(request, {"error": "not_found", "message": f"no call {call_id}"}, 404)
    return reply(request, call_json(row))


NOT_FOUND = Reply("No such call.", ErrorBody)

OPERATIONS = (
    Operation("GET", "/api/v1/calls", list_calls, "supervisor",
              "Search calls, newest first, a page at a time (or all of them as CSV).",
              "calls", query=CallSearch,
              responses={"200": Reply("A page of calls (or every matching call as CSV).",
                                      CallPage, csv=True)}),
    Operation("GET", "/api/v1/calls/{id}", get_call, "supervisor",
              "One call with its attempts timeline.", "calls", query=NoQuery,
              path_params=CallId,
              responses={"200": Reply("The call.", Call), "404": NOT_FOUND}),
    Operation("PATCH", "/api/v1/calls/{id}", patch_call, "supervisor",
              "Set a call's category (from the configured list), note and/or resolution "
              "(resolved, referred to a department, pending, unresolved: recorded with who "
              "and when).", "calls",
              query=NoQuery, path_params=CallId, body=CallPatch,
              responses={"200": Reply("The updated call.", Call), "404": NOT_FOUND}),
)
