"""Reading Asterisk's CEL table (as cel_pgsql writes it) for a window of time.

cel_pgsql inserts one row per channel event into a table (default `cel`)
whose columns are named by the event record's fields: eventtype, eventtime,
cid_num, channame, uniqueid, linkedid, extra, ... The table is the site's, not
ours: it is reflected, not declared, so a site's extra or missing columns do
no harm, and `eventtime` may be `timestamp` (cel_pgsql with usegmtime=yes
writes UTC there) or `timestamptz`.

A window is read as whole calls: every row of each linkedid that has a row in
[start, end), ordered by eventtime and then id (the order Asterisk wrote
them), so a call that began before the window or ended after it is complete.
Rows further than `margin` outside the window are not searched (a call lasts
less), which keeps the scan bounded on a table without a linkedid index; an
index on `eventtime` (and one on `linkedid`) makes the read cheap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callhub.store.db import Database

DEFAULT_TABLE = "cel"
DEFAULT_MARGIN = timedelta(hours=4)


async def read_cel(source: str | AsyncEngine, *, start: datetime, end: datetime,
                   table: str = DEFAULT_TABLE,
                   margin: timedelta = DEFAULT_MARGIN) -> list[dict[str, Any]]:
    """The rows of every call with a row in [start, end), in eventtime, id order.

    `source` is a database URL (an engine is made and closed here) or an engine
    to borrow. `table` may be schema-qualified (`asterisk.cel`). A time without a
    zone is UTC.
    """
    if isinstance(source, str):
        database = Database.connect(source)
        try:
            return await _read(database.engine, start, end, table, margin)
        finally:
            await database.close()
    return await _read(source, start, end, table, margin)


async def _read(engine: AsyncEngine, start: datetime, end: datetime, table: str,
                margin: timedelta) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        cel = await reflect(conn, table)
        eventtime = cel.c.eventtime
        zoned = bool(getattr(eventtime.type, "timezone", False))
        low, high = _bound(start, zoned), _bound(end, zoned)
        in_window = sa.select(cel.c.linkedid).where(eventtime >= low, eventtime < high)
        order = [eventtime] + ([cel.c.id] if "id" in cel.c else [])
        query = (sa.select(cel)
                 .where(cel.c.linkedid.in_(in_window),
                        eventtime >= low - margin, eventtime < high + margin)
                 .order_by(*order))
        result = await conn.execute(query)
        return [dict(row._mapping) for row in result]


async def reflect(conn: AsyncConnection, table: str) -> sa.Table:
    """The CEL table as the database has it; `schema.name` names another schema."""
    schema, _, name = table.rpartition(".")

    def load(sync_conn: sa.Connection) -> sa.Table:
        return sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=sync_conn)

    cel = await conn.run_sync(load)
    missing = {"eventtime", "linkedid"} - set(cel.c.keys())
    if missing:
        raise ValueError(f"{table}: not a CEL table (no column {', '.join(sorted(missing))})")
    return cel


def _bound(moment: datetime, zoned: bool) -> datetime:
    """A window edge as the column compares it: aware for timestamptz, naive UTC else."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware if zoned else aware.astimezone(UTC).replace(tzinfo=None)
