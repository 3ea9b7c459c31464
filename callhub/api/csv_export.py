"""Calls as CSV for Excel: UTF-8 with a BOM (so 张三 shows as 张三), local times, safe cells.

Rows are streamed page by page, never all in memory. A text cell that
starts like a formula (`=`, `+`, `-`, `@`) gets a leading apostrophe so a
caller name cannot run in a spreadsheet; plain phone numbers (`+8613...`)
are left as they are.

Each page is read within the database's limit (`Database.query`), not the export
as a whole: a long export of a database that answers is never cut. The first page
is read before the answer starts, so a database that is down or hangs gets the
API's 503. A later page that fails can no longer change the 200 already sent: the
connection is then dropped before the body's end, so the client sees a transfer
cut short (a browser's download fails) rather than a file that looks complete.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime, tzinfo
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from callhub.spreadsheet import safe_text
from callhub.store import queries
from callhub.store.db import Database

log = structlog.get_logger(__name__)

COLUMNS = (
    "id", "pbx", "linkedid", "direction", "line", "called_number", "caller_number",
    "caller_name", "arrived_at", "ring_started_at", "answered_at", "ended_at", "ring_seconds",
    "rings", "wait_seconds", "talk_seconds", "hold_seconds", "outcome", "reason", "voicemail",
    "short_abandon", "agent", "agent_name", "hangup_by", "hangup_cause", "queue", "incomplete",
    "category", "note", "worklist_status",
    "resolution", "resolution_department", "resolution_at", "resolution_by",
    "source", "rings_estimated",
)
# New columns go last: a spreadsheet or script reading the export by position keeps working.
PAGE = 1000


def cell(value: Any, tz: tzinfo) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")
    return safe_text(str(value))


def render(rows: Iterable[dict[str, Any]], tz: tzinfo, header: bool = False) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([cell(row.get(c), tz) for c in COLUMNS])
    return out.getvalue().encode("utf-8")


async def stream_calls(request: web.Request, db: Database, f: queries.CallFilter,
                       after: tuple[datetime, int] | None, tz: tzinfo) -> web.StreamResponse:
    async def page(after: tuple[datetime, int] | None) -> list[dict[str, Any]]:
        return await db.query(lambda conn: queries.list_calls(conn, f, PAGE, after))

    rows = await page(after)  # before the 200: its failure is the API's 503
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="calls.csv"',
    })
    await response.prepare(request)
    await response.write("\ufeff".encode() + render((), tz, header=True))
    sent = 0
    while rows:
        await response.write(render(rows, tz))
        sent += len(rows)
        if len(rows) < PAGE:
            break
        try:
            rows = await page((rows[-1]["arrived_at"], rows[-1]["id"]))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("api.csv_export_cut", rows_sent=sent, error=type(exc).__name__,
                        detail=str(exc).splitlines()[0] if str(exc) else "")
            if request.transport is not None:
                request.transport.abort()  # the chunked body never ends: the client knows
            return response
    await response.write_eof()
    return response
