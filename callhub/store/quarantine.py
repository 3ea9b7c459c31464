"""The quarantine: calls the database refused for a reason of their own, kept for an admin.

The writer puts a call here when its batch failed with a data error and the
split found it alone to blame, so that it does not block every call after it.
The row has the record as JSON (ASCII, so any odd value fits), the error and
the time. Quarantining the same record twice (a crash before the writer
recorded its progress) keeps one row. A spool line that could not be read
back as a call is kept here too, before its segment is deleted: its JSON as
it is, or the line as one JSON string when it is not JSON.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.records import CallRecord
from callhub.store.tables import quarantine
from callhub.store.upsert import insert


def record_json(record: CallRecord) -> str:
    return json.dumps(record.to_dict(), sort_keys=True)


async def add(conn: AsyncConnection, record: CallRecord, error: str,
              now: datetime | None = None) -> bool:
    """Quarantine `record`; False if it already was."""
    text = record_json(record)
    stmt = insert(conn, quarantine).values(
        record_key=hashlib.sha256(text.encode("ascii")).hexdigest(),
        pbx=json.dumps(record.pbx)[1:-1], linkedid=json.dumps(record.linkedid)[1:-1],
        record=text, error=error.replace("\x00", "\\0"),
        quarantined_at=now or datetime.now(UTC),
    ).on_conflict_do_nothing(index_elements=["record_key"])
    result = await conn.execute(stmt)
    return bool(result.rowcount)


async def add_line(conn: AsyncConnection, line: bytes, error: str,
                   now: datetime | None = None) -> bool:
    """Quarantine a damaged spool line; False if it already was."""
    text = line.decode("utf-8", "backslashreplace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = text
    fields = data if isinstance(data, dict) else {}
    pbx, linkedid = fields.get("pbx"), fields.get("linkedid")
    stmt = insert(conn, quarantine).values(
        record_key=hashlib.sha256(line).hexdigest(),
        pbx=json.dumps(pbx)[1:-1] if isinstance(pbx, str) else "",
        linkedid=json.dumps(linkedid)[1:-1] if isinstance(linkedid, str) else "",
        record=json.dumps(data, sort_keys=True),
        error=f"spool line unreadable: {error}".replace("\x00", "\\0")[:500],
        quarantined_at=now or datetime.now(UTC),
    ).on_conflict_do_nothing(index_elements=["record_key"])
    result = await conn.execute(stmt)
    return bool(result.rowcount)


async def listing(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    """The newest quarantined calls first."""
    rows = await conn.execute(
        sa.select(quarantine.c.id, quarantine.c.pbx, quarantine.c.linkedid,
                  quarantine.c.error, quarantine.c.quarantined_at, quarantine.c.record)
        .order_by(quarantine.c.id.desc()).limit(limit))
    return [dict(row) for row in rows.mappings()]


async def count(conn: AsyncConnection) -> int:
    return int(await conn.scalar(sa.select(sa.func.count()).select_from(quarantine)) or 0)
