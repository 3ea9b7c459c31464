"""Calls as CSV for Excel: UTF-8 with a BOM (so 张三 shows as 张三), local times, safe cells.

Rows are streamed page by page, never all in memory. A text cell that
starts like a formula (`=`, `+`, `-`, `@`) gets a leading apostrophe so a
caller name cannot run in a spreadsheet; plain phone numbers (`+8613...`)
are left as they are.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime, tzinfo
from typing import Any

from aiohttp import web

from callhub.spreadsheet import safe_text
from callhub.store import queries
from callhub.store.db import Database

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
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="calls.csv"',
    })
    await response.prepare(request)
    await response.write("\ufeff".encode() + render((), tz, header=True))
    while True:
        async with db.connection() as conn:
            rows = await queries.list_calls(conn, f, PAGE, after)
        if not rows:
            break
        await response.write(render(rows, tz))
        if len(rows) < PAGE:
            break
        after = (rows[-1]["arrived_at"], rows[-1]["id"])
    await response.write_eof()
    return response
