"""GET /worklist, POST /worklist/{id}/handled, POST /worklist/{id}/dismiss."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.api import cursors
from callhub.api.base import (
    DB,
    METRICS,
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
    Who,
)
from callhub.api.schemas import ErrorBody, WorklistEntry, WorklistPage
from callhub.store import queries, worklist

MAX_LIMIT = 1000
MAX_ID = 2**31 - 1



class WorklistQuery(Query):
    status: Literal["pending", "handled", "dismissed"] | None = Field(
        None, description="Only entries with this status (default: all, pending first).")
    line: Filter | None = Field(None, description="Only entries of this line.")
    number: Filter | None = Field(None, description="Only entries of this caller number.")
    start: Moment | None = Field(None, alias="from", description=(
        "Entries whose first missed call arrived at or after this."))
    to: Moment | None = Field(None, description="Entries whose first missed call arrived "
                                                "before this.")
    limit: int = Field(100, ge=1, le=MAX_LIMIT, description="Entries per page.")
    cursor: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="`next_cursor` of the previous page.")


class EntryId(Path):
    id: int = Field(ge=1, le=MAX_ID, description="The worklist entry's numeric id.")


class Handled(Body):
    """Who handled the entry, and a note."""

    who: Annotated[Who, Field(min_length=1)]
    note: Note | None = None


class Dismissal(Body):
    """Who dismissed the entry, and a note."""

    who: Who | None = None
    note: Note | None = None


def entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry as the API shows it, made of the entry itself (no copy per entry)."""
    entry.pop("updated_at", None)
    entry["line"] = entry["line"] or None
    return entry


async def list_worklist(request: web.Request) -> web.StreamResponse:
    args = query_of(request, WorklistQuery)
    if args.start is not None and args.to is not None and args.start >= args.to:
        raise BadParameter("to", "must be later than from")
    after = None
    if args.cursor is not None:
        rank, at, entry_id = cursors.WORKLIST.decode(args.cursor)
        after = queries.WorklistPosition(rank, cursors.moment(at), entry_id)
    f = queries.WorklistFilter(status=args.status, line=args.line, number=args.number,
                               start=args.start, end=args.to)
    entries = await request.app[DB].read(
        lambda conn: queries.list_worklist(conn, f, args.limit + 1, after))
    next_cursor = None
    if len(entries) > args.limit:
        last = queries.worklist_position(entries[args.limit - 1])
        next_cursor = cursors.WORKLIST.encode(last.rank, cursors.micros(last.first_missed_at),
                                              last.id)
    return reply(request, {"items": [entry_json(e) for e in entries[:args.limit]],
                           "next_cursor": next_cursor})


async def _mark(request: web.Request, status: str, who: str | None,
                note: str | None) -> web.StreamResponse:
    entry_id = path_of(request, EntryId).id
    for key, value in (("who", who), ("note", note)):
        if value is not None and not value.strip():
            raise BadParameter(key, "must not be blank")

    async def mark(conn: AsyncConnection) -> tuple[float | None, dict[str, Any] | None]:
        took = await worklist.mark(conn, entry_id, status, who, note)
        return took, await queries.get_entry(conn, entry_id)

    took, entry = await request.app[DB].change(mark)
    assert entry is not None
    metrics = request.app[METRICS]
    if took is not None and metrics is not None:
        metrics.observe_callback(took)
    return reply(request, entry_json(entry))


async def mark_handled(request: web.Request) -> web.StreamResponse:
    body = body_of(request, Handled)
    return await _mark(request, "handled", body.who, body.note)


async def dismiss(request: web.Request) -> web.StreamResponse:
    body = body_of(request, Dismissal)
    return await _mark(request, "dismissed", body.who, body.note)


MARK_RESPONSES = {
    "200": Reply("The entry after the change.", WorklistEntry),
    "404": Reply("No such entry.", ErrorBody),
    "409": Reply("The entry is no longer pending.", ErrorBody),
}

OPERATIONS = (
    Operation("GET", "/api/v1/worklist", list_worklist, "supervisor",
              "Missed and abandoned callers to call back: pending first, oldest first.",
              "worklist", query=WorklistQuery,
              responses={"200": Reply("A page of entries.", WorklistPage)}),
    Operation("POST", "/api/v1/worklist/{id}/handled", mark_handled, "supervisor",
              "Mark a pending entry handled by hand (how=manual).", "worklist",
              query=NoQuery, path_params=EntryId, body=Handled, responses=MARK_RESPONSES),
    Operation("POST", "/api/v1/worklist/{id}/dismiss", dismiss, "supervisor",
              "Dismiss a pending entry (no callback needed).", "worklist",
              query=NoQuery, path_params=EntryId, body=Dismissal, responses=MARK_RESPONSES),
)
