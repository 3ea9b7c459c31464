"""GET /sms (the SMS outbox with each message's status) and the SMS opt-out list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.api import cursors
from callhub.api.auth import ROLE
from callhub.api.base import DB, SETTINGS, Operation, Reply, body_of, query_of, reply
from callhub.api.params import BadParameter, Body, Moment, NoQuery, Query
from callhub.api.schemas import ErrorBody, SmsOptout, SmsOptoutList, SmsPage
from callhub.sms.numbers import check_number
from callhub.store import sms_outbox as store

MAX_LIMIT = 500
Status = Literal["queued", "sending", "sent", "failed", "expired"]


class SmsSearch(Query):
    """GET /sms: filters and the page."""

    status: Status | None = Field(None, description="Messages with this status.")
    start: Moment | None = Field(None, alias="from", description=(
        "Messages queued at or after this time (ISO 8601; without an offset, in the "
        "configured time zone)."))
    to: Moment | None = Field(None, description="Messages queued before this time.")
    limit: int = Field(50, ge=1, le=MAX_LIMIT, description="Messages per page.")
    cursor: Annotated[str, Field(max_length=200)] | None = Field(
        None, description="`next_cursor` of the previous page.")


class OptoutNumber(Query):
    number: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="The number to take off the opt-out list.")


class OptoutBody(Body):
    number: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        description="The number that gets no SMS (as callers' numbers arrive, e.g. "
                    "+8613800138000; spaces and dashes are dropped).")


def _number(request: web.Request, raw: str) -> str:
    """The number as the outbox stores it (the same rule the SMS decision uses)."""
    sms = request.app[SETTINGS].sms
    check = check_number(raw, sms.min_digits if sms is not None else 7)
    if check.number is None:
        raise BadParameter("number", f"not a number an SMS could go to ({check.refusal})")
    return check.number


async def list_sms(request: web.Request) -> web.StreamResponse:
    args = query_of(request, SmsSearch)
    if args.start is not None and args.to is not None and args.start >= args.to:
        raise BadParameter("to", "must be later than from")
    after = None
    if args.cursor is not None:
        at, last_id = cursors.SMS.decode(args.cursor)
        after = (cursors.moment(at), last_id)
    rows = await request.app[DB].query(lambda conn: store.list_outbox(
        conn, status=args.status, start=args.start, end=args.to, limit=args.limit + 1,
        after=after))
    next_cursor = None
    if len(rows) > args.limit:
        last = rows[args.limit - 1]
        next_cursor = cursors.SMS.encode(cursors.micros(last["created_at"]), last["id"])
    return reply(request, {"items": rows[:args.limit], "next_cursor": next_cursor})


async def list_optouts(request: web.Request) -> web.StreamResponse:
    rows = await request.app[DB].query(store.list_optouts)
    return reply(request, {"items": rows})


async def add_optout(request: web.Request) -> web.StreamResponse:
    number = _number(request, body_of(request, OptoutBody).number)

    async def add(conn: AsyncConnection) -> tuple[bool, list[dict[str, Any]]]:
        added = await store.add_optout(conn, number, request.get(ROLE), datetime.now(UTC))
        return added, [r for r in await store.list_optouts(conn) if r["number"] == number]

    added, rows = await request.app[DB].change(add)
    return reply(request, rows[0], status=201 if added else 200)


async def remove_optout(request: web.Request) -> web.StreamResponse:
    number = _number(request, query_of(request, OptoutNumber).number)
    removed = await request.app[DB].change(lambda conn: store.remove_optout(conn, number))
    if not removed:
        return reply(request, {"error": "not_found",
                               "message": "that number is not opted out"}, 404)
    return web.Response(status=204)


OPERATIONS = (
    Operation("GET", "/api/v1/sms", list_sms, "supervisor",
              "The SMS outbox, newest first: each message after a call and its status.",
              "sms", query=SmsSearch,
              responses={"200": Reply("A page of messages.", SmsPage)}),
    Operation("GET", "/api/v1/sms/optouts", list_optouts, "supervisor",
              "The numbers that get no SMS.", "sms", query=NoQuery,
              responses={"200": Reply("The opt-out list.", SmsOptoutList)}),
    Operation("POST", "/api/v1/sms/optouts", add_optout, "supervisor",
              "Opt a number out of every SMS (201: added; 200: it was already).", "sms",
              query=NoQuery, body=OptoutBody,
              responses={"201": Reply("Added.", SmsOptout),
                         "200": Reply("Already on the list.", SmsOptout)}),
    Operation("DELETE", "/api/v1/sms/optouts", remove_optout, "supervisor",
              "Take a number off the opt-out list.", "sms", query=OptoutNumber,
              responses={"204": {"description": "Removed."},
                         "404": Reply("Not on the list.", ErrorBody)}),
)
