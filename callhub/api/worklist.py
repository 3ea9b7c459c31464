"""GET /worklist, POST /worklist/{id}/handled, POST /worklist/{id}/dismiss."""

from __future__ import annotations

import base64
import binascii
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from callhub.api.base import (
    DB,
    ID_PARAM,
    METRICS,
    SETTINGS,
    Operation,
    error_response,
    json_body,
    json_response,
    path_int,
)
from callhub.api.params import BadParameter, Param, parse_query
from callhub.store import queries, worklist

MAX_LIMIT = 1000
MAX_TEXT = 4000

WORKLIST_PARAMS: tuple[Param, ...] = (
    Param("status", "string", "Only entries with this status (default: all, pending first).",
          enum=worklist.STATUSES),
    Param("line", "string", "Only entries of this line."),
    Param("number", "string", "Only entries of this caller number."),
    Param("from", "datetime", "Entries whose first missed call arrived at or after this."),
    Param("to", "datetime", "Entries whose first missed call arrived before this."),
    Param("limit", "integer", "Entries per page.", minimum=1, maximum=MAX_LIMIT, default=100),
    Param("cursor", "string", "`next_cursor` of the previous page.", max_length=40),
)


_CURSOR = struct.Struct(">cBqq")  # b"w", rank, first miss in POSIX microseconds, id
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(position: queries.WorklistPosition) -> str:
    """An opaque cursor for the page after `position` (24 characters)."""
    micros = (position.first_missed_at - _EPOCH) // timedelta(microseconds=1)
    raw = _CURSOR.pack(b"w", position.rank, micros, position.id)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> queries.WorklistPosition:
    """The position in a cursor made by `encode_cursor`; BadParameter otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        kind, rank, micros, entry_id = _CURSOR.unpack(raw)
        if kind != b"w" or rank not in (0, 1) or entry_id < 1:
            raise ValueError("bad cursor")
        at = _EPOCH + timedelta(microseconds=micros)
    except (ValueError, OverflowError, struct.error, binascii.Error):
        raise BadParameter("cursor", "not a cursor this API returned") from None
    return queries.WorklistPosition(rank, at, entry_id)


def entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k != "updated_at"}
    out["line"] = entry["line"] or None
    return out


async def list_worklist(request: web.Request) -> web.StreamResponse:
    args = parse_query(request.query, WORKLIST_PARAMS, request.app[SETTINGS].tz)
    if args["from"] is not None and args["to"] is not None and args["from"] >= args["to"]:
        raise BadParameter("to", "must be later than from")
    after = decode_cursor(args["cursor"]) if args["cursor"] is not None else None
    limit = int(args["limit"])
    f = queries.WorklistFilter(status=args["status"], line=args["line"], number=args["number"],
                               start=args["from"], end=args["to"])
    async with request.app[DB].connection() as conn:
        entries = await queries.list_worklist(conn, f, limit + 1, after)
    next_cursor = (encode_cursor(queries.worklist_position(entries[limit - 1]))
                   if len(entries) > limit else None)
    return json_response({"items": [entry_json(e) for e in entries[:limit]],
                          "next_cursor": next_cursor})


async def _mark(request: web.Request, status: str) -> web.StreamResponse:
    parse_query(request.query, (), request.app[SETTINGS].tz)
    entry_id = path_int(request, "id")
    body = await json_body(request, {"who": str, "note": str},
                           required=("who",) if status == "handled" else ())
    for key in ("who", "note"):
        value = body.get(key)
        if value is not None and not value.strip():
            raise BadParameter(key, "must not be blank")
        if value is not None and len(value) > MAX_TEXT:
            raise BadParameter(key, f"longer than {MAX_TEXT} characters")
    try:
        async with request.app[DB].begin() as conn:
            took = await worklist.mark(conn, entry_id, status, body.get("who"),
                                       body.get("note"))
            entry = await queries.get_entry(conn, entry_id)
    except worklist.WorklistError as exc:
        return error_response(exc.status, "not_found" if exc.status == 404 else "conflict",
                              str(exc))
    assert entry is not None
    metrics = request.app[METRICS]
    if took is not None and metrics is not None:
        metrics.observe_callback(took)
    return json_response(entry_json(entry))


async def mark_handled(request: web.Request) -> web.StreamResponse:
    return await _mark(request, "handled")


async def dismiss(request: web.Request) -> web.StreamResponse:
    return await _mark(request, "dismissed")


ENTRY_REF = {"$ref": "#/components/schemas/WorklistEntry"}
MARK_RESPONSES = {
    "200": {"description": "The entry after the change.",
            "content": {"application/json": {"schema": ENTRY_REF}}},
    "404": {"$ref": "#/components/responses/NotFound"},
    "409": {"description": "The entry is no longer pending.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
}

OPERATIONS = (
    Operation("GET", "/api/v1/worklist", list_worklist, "supervisor",
              "Missed and abandoned callers to call back: pending first, oldest first.",
              "worklist", query=WORKLIST_PARAMS,
              responses={"200": {"description": "A page of entries.", "content": {
                  "application/json": {"schema": {
                      "type": "object", "required": ["items", "next_cursor"],
                      "properties": {"items": {"type": "array", "items": ENTRY_REF},
                                     "next_cursor": {"type": ["string", "null"]}}}}}}}),
    Operation("POST", "/api/v1/worklist/{id}/handled", mark_handled, "supervisor",
              "Mark a pending entry handled by hand (how=manual).", "worklist",
              path_params=(ID_PARAM,),
              body={"type": "object", "required": ["who"], "additionalProperties": False,
                    "properties": {"who": {"type": "string", "minLength": 1},
                                   "note": {"type": ["string", "null"]}}},
              responses=MARK_RESPONSES),
    Operation("POST", "/api/v1/worklist/{id}/dismiss", dismiss, "supervisor",
              "Dismiss a pending entry (no callback needed).", "worklist",
              path_params=(ID_PARAM,),
              body={"type": "object", "additionalProperties": False,
                    "properties": {"who": {"type": ["string", "null"]},
                                   "note": {"type": ["string", "null"]}}},
              responses=MARK_RESPONSES),
)
