"""GET /calls (search, keyset pages, CSV), GET /calls/{id}, PATCH /calls/{id}."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from aiohttp import web

from callhub.api import csv_export
from callhub.api.base import (
    DB,
    ID_PARAM,
    SETTINGS,
    Operation,
    error_response,
    json_body,
    json_response,
    path_int,
)
from callhub.api.params import BadParameter, Param, parse_query
from callhub.records import OUTCOMES, REASONS
from callhub.store import queries
from callhub.store.worklist import STATUSES

MAX_LIMIT = 500
MAX_NOTE = 4000

CALL_FILTERS: tuple[Param, ...] = (
    Param("from", "datetime", "Calls that arrived at or after this time (ISO 8601; without "
          "an offset, in the configured time zone)."),
    Param("to", "datetime", "Calls that arrived before this time."),
    Param("direction", "string", "inbound, outbound or internal.",
          enum=("inbound", "outbound", "internal")),
    Param("outcome", "string", "The call's outcome.", enum=OUTCOMES),
    Param("reason", "string", "Why an unanswered call was lost.", enum=REASONS),
    Param("line", "string", "The line (configured name of the DID, else the DID)."),
    Param("did", "string", "The dialled number of inbound calls."),
    Param("agent", "string", "The agent's device interface (PJSIP/1001) or name."),
    Param("caller_number", "string", "The calling number exactly."),
    Param("number", "string", "The outside party's number: the caller of an inbound call, "
          "the dialled number of an outbound one."),
    Param("min_rings", "integer", "Calls that rang at least this many rings.",
          minimum=0, maximum=1000),
    Param("worklist_status", "string", "Calls listed on a worklist entry with this status.",
          enum=STATUSES),
    Param("pbx", "string", "The PBX name."),
)
PAGE_PARAMS: tuple[Param, ...] = (
    Param("limit", "integer", "Calls per page.", minimum=1, maximum=MAX_LIMIT, default=50),
    Param("cursor", "string", "`next_cursor` of the previous page.", max_length=200),
    Param("format", "string", "`csv` for a CSV file of every matching call (UTF-8 with BOM).",
          enum=("json", "csv")),
)


def encode_cursor(row: dict[str, Any]) -> str:
    raw = json.dumps([row["arrived_at"].isoformat(), row["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at, call_id = json.loads(raw)
        value = datetime.fromisoformat(at)
        if value.tzinfo is None or not isinstance(call_id, int) or isinstance(call_id, bool):
            raise ValueError("bad cursor")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadParameter("cursor", "not a cursor this API returned (use next_cursor as "
                                     "given)") from None
    return value, call_id


def call_filter(args: dict[str, Any]) -> queries.CallFilter:
    if args["from"] is not None and args["to"] is not None and args["from"] >= args["to"]:
        raise BadParameter("to", "must be later than from")
    return queries.CallFilter(
        start=args["from"], end=args["to"], direction=args["direction"],
        outcome=args["outcome"], reason=args["reason"], line=args["line"], did=args["did"],
        agent=args["agent"], caller_number=args["caller_number"], number=args["number"],
        min_rings=args["min_rings"], worklist_status=args["worklist_status"],
        pbx=args["pbx"])


def call_json(row: dict[str, Any]) -> dict[str, Any]:
    """A calls row as the API shows it."""
    out = {k: v for k, v in row.items() if k not in ("worklist_id", "worklist_status",
                                                    "updated_at")}
    out["worklist"] = ({"id": row["worklist_id"], "status": row["worklist_status"]}
                       if row.get("worklist_id") is not None else None)
    return out


def wants_csv(request: web.Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "application/json" not in accept


async def list_calls(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    args = parse_query(request.query, (*CALL_FILTERS, *PAGE_PARAMS), settings.tz)
    f = call_filter(args)
    after = decode_cursor(args["cursor"]) if args["cursor"] is not None else None
    db = request.app[DB]
    if wants_csv(request, args["format"]):
        return await csv_export.stream_calls(request, db, f, after, settings.tz)
    limit = int(args["limit"])
    async with db.connection() as conn:
        rows = await queries.list_calls(conn, f, limit + 1, after)
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return json_response({"items": [call_json(r) for r in rows[:limit]],
                          "next_cursor": next_cursor})


async def get_call(request: web.Request) -> web.StreamResponse:
    parse_query(request.query, (), request.app[SETTINGS].tz)
    call_id = path_int(request, "id")
    async with request.app[DB].connection() as conn:
        row = await queries.get_call(conn, call_id)
    if row is None:
        return error_response(404, "not_found", f"no call {call_id}")
    return json_response(call_json(row))


async def patch_call(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    parse_query(request.query, (), settings.tz)
    call_id = path_int(request, "id")
    body = await json_body(request, {"category": str, "note": str})
    if not body:
        raise BadParameter("body", "give category and/or note")
    if body.get("category") is not None and body["category"] not in settings.categories:
        raise BadParameter("category", f"must be one of {', '.join(settings.categories)}")
    if body.get("note") is not None and len(body["note"]) > MAX_NOTE:
        raise BadParameter("note", f"longer than {MAX_NOTE} characters")
    async with request.app[DB].begin() as conn:
        found = await queries.update_call(conn, call_id, body)
        row = await queries.get_call(conn, call_id) if found else None
    if row is None:
        return error_response(404, "not_found", f"no call {call_id}")
    return json_response(call_json(row))


CALL_SCHEMA_REF = {"$ref": "#/components/schemas/Call"}

OPERATIONS = (
    Operation("GET", "/api/v1/calls", list_calls, "supervisor",
              "Search calls, newest first, a page at a time (or all of them as CSV).",
              "calls", query=(*CALL_FILTERS, *PAGE_PARAMS),
              responses={"200": {"description": "A page of calls.", "content": {
                  "application/json": {"schema": {
                      "type": "object", "required": ["items", "next_cursor"],
                      "properties": {"items": {"type": "array", "items": CALL_SCHEMA_REF},
                                     "next_cursor": {"type": ["string", "null"]}}}},
                  "text/csv": {"schema": {"type": "string"}}}}}),
    Operation("GET", "/api/v1/calls/{id}", get_call, "supervisor",
              "One call with its attempts timeline.", "calls", path_params=(ID_PARAM,),
              responses={"200": {"description": "The call.", "content": {
                  "application/json": {"schema": CALL_SCHEMA_REF}}},
                  "404": {"$ref": "#/components/responses/NotFound"}}),
    Operation("PATCH", "/api/v1/calls/{id}", patch_call, "supervisor",
              "Set a call's category (from the configured list) and/or note.", "calls",
              path_params=(ID_PARAM,),
              body={"type": "object", "additionalProperties": False, "properties": {
                  "category": {"type": ["string", "null"]},
                  "note": {"type": ["string", "null"], "maxLength": MAX_NOTE}}},
              responses={"200": {"description": "The updated call.", "content": {
                  "application/json": {"schema": CALL_SCHEMA_REF}}},
                  "404": {"$ref": "#/components/responses/NotFound"}}),
)
