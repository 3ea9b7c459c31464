"""Read queries behind the API: call search with keyset pagination, one call, the worklist.

Parameters arrive already validated (callhub/api/params.py); these functions
only build SQL. Calls come newest first, ordered by (arrived_at, id) so a
cursor is the last row's pair and pages never skip or repeat a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store.tables import attempts, calls, worklist_calls, worklist_entries


@dataclass(frozen=True, slots=True)
class CallFilter:
    """Every filter `GET /calls` takes; None means not filtered."""

    start: datetime | None = None
    end: datetime | None = None
    direction: str | None = None
    outcome: str | None = None
    reason: str | None = None
    line: str | None = None
    did: str | None = None
    agent: str | None = None
    caller_number: str | None = None
    number: str | None = None
    min_rings: int | None = None
    worklist_status: str | None = None
    pbx: str | None = None


def _call_conditions(f: CallFilter) -> list[sa.ColumnElement[bool]]:
    c = calls.c
    where: list[sa.ColumnElement[bool]] = []
    if f.start is not None:
        where.append(c.arrived_at >= f.start)
    if f.end is not None:
        where.append(c.arrived_at < f.end)
    for column, value in ((c.direction, f.direction), (c.outcome, f.outcome),
                          (c.reason, f.reason), (c.line, f.line), (c.caller_number,
                          f.caller_number), (c.external_number, f.number), (c.pbx, f.pbx)):
        if value is not None:
            where.append(column == value)
    if f.did is not None:
        where.append(sa.and_(c.direction == "inbound", c.called_number == f.did))
    if f.agent is not None:
        where.append(sa.or_(c.agent == f.agent, c.agent_name == f.agent))
    if f.min_rings is not None:
        where.append(c.rings >= f.min_rings)
    if f.worklist_status is not None:
        where.append(c.id.in_(
            sa.select(worklist_calls.c.call_id)
            .join(worklist_entries, worklist_entries.c.id == worklist_calls.c.entry_id)
            .where(worklist_entries.c.status == f.worklist_status)))
    return where


def _worklist_of_calls() -> Any:
    """calls LEFT JOIN their worklist entry (id and status)."""
    return (calls.outerjoin(worklist_calls, worklist_calls.c.call_id == calls.c.id)
            .outerjoin(worklist_entries, worklist_entries.c.id == worklist_calls.c.entry_id))


CALL_COLUMNS = [*calls.c, worklist_entries.c.id.label("worklist_id"),
                worklist_entries.c.status.label("worklist_status")]


async def list_calls(conn: AsyncConnection, f: CallFilter, limit: int,
                     after: tuple[datetime, int] | None = None) -> list[dict[str, Any]]:
    """Up to `limit` calls matching `f`, newest first, after the keyset position `after`."""
    stmt = sa.select(*CALL_COLUMNS).select_from(_worklist_of_calls())
    where = _call_conditions(f)
    if after is not None:
        at, last_id = after
        where.append(sa.or_(calls.c.arrived_at < at,
                            sa.and_(calls.c.arrived_at == at, calls.c.id < last_id)))
    stmt = stmt.where(*where).order_by(calls.c.arrived_at.desc(), calls.c.id.desc())
    rows = (await conn.execute(stmt.limit(limit))).mappings().all()
    return [dict(r) for r in rows]


async def get_call(conn: AsyncConnection, call_id: int) -> dict[str, Any] | None:
    """One call with its attempts in order, or None."""
    row = (await conn.execute(sa.select(*CALL_COLUMNS).select_from(_worklist_of_calls())
                              .where(calls.c.id == call_id))).mappings().first()
    if row is None:
        return None
    call = dict(row)
    call["attempts"] = [dict(a) for a in (await conn.execute(
        sa.select(attempts).where(attempts.c.call_id == call_id)
        .order_by(attempts.c.seq))).mappings().all()]
    return call


async def update_call(conn: AsyncConnection, call_id: int, values: dict[str, Any]) -> bool:
    """Set category and/or note; False when there is no such call."""
    result = await conn.execute(sa.update(calls).where(calls.c.id == call_id)
                                .values(**values, updated_at=datetime.now(UTC)))
    return bool(result.rowcount)


@dataclass(frozen=True, slots=True)
class WorklistFilter:
    status: str | None = None
    line: str | None = None
    number: str | None = None
    start: datetime | None = None
    end: datetime | None = None


async def list_worklist(conn: AsyncConnection, f: WorklistFilter, limit: int,
                        offset: int = 0) -> list[dict[str, Any]]:
    """Entries, pending first, then oldest first; each with its calls."""
    w = worklist_entries.c
    where: list[sa.ColumnElement[bool]] = []
    if f.status is not None:
        where.append(w.status == f.status)
    if f.line is not None:
        where.append(w.line == f.line)
    if f.number is not None:
        where.append(w.number == f.number)
    if f.start is not None:
        where.append(w.first_missed_at >= f.start)
    if f.end is not None:
        where.append(w.first_missed_at < f.end)
    pending_first = sa.case((w.status == "pending", 0), else_=1)
    rows = (await conn.execute(
        sa.select(worklist_entries).where(*where)
        .order_by(pending_first, w.first_missed_at, w.id).limit(limit).offset(offset)
    )).mappings().all()
    entries = [dict(r) for r in rows]
    await _attach_calls(conn, entries)
    return entries


async def get_entry(conn: AsyncConnection, entry_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(worklist_entries)
                              .where(worklist_entries.c.id == entry_id))).mappings().first()
    if row is None:
        return None
    entries = [dict(row)]
    await _attach_calls(conn, entries)
    return entries[0]


async def _attach_calls(conn: AsyncConnection, entries: Sequence[dict[str, Any]]) -> None:
    by_id = {e["id"]: e for e in entries}
    for e in entries:
        e["calls"] = []
    if not by_id:
        return
    rows = (await conn.execute(
        sa.select(worklist_calls.c.entry_id, calls.c.id, calls.c.linkedid, calls.c.arrived_at,
                  calls.c.outcome, calls.c.reason, calls.c.ring_seconds, calls.c.wait_seconds,
                  calls.c.caller_name, calls.c.called_number)
        .join(calls, calls.c.id == worklist_calls.c.call_id)
        .where(worklist_calls.c.entry_id.in_(list(by_id)))
        .order_by(calls.c.arrived_at, calls.c.id))).mappings().all()
    for r in rows:
        call = dict(r)
        by_id[call.pop("entry_id")]["calls"].append(call)
