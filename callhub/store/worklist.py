"""The missed-call worklist: kept up to date from call records as they are written.

A missed or abandoned inbound call (a short abandon only when configured)
joins the open entry of its caller number and line, or opens one. An
answered call with the same outside number afterwards handles every open
entry of that number: `callback` when it was outbound, `called_again` when
the caller got through inbound. Supervisors handle (`manual`) or dismiss
entries through the API. Records may arrive out of order (a spool replay, a
stale call closed late), so a new miss also looks for an answer already
stored after it. Everything is idempotent: a call is listed once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.config import Settings
from callhub.records import CallRecord
from callhub.store.tables import calls, utc, worklist_calls, worklist_entries

STATUSES = ("pending", "handled", "dismissed")
HOWS = ("callback", "called_again", "manual")


class WorklistError(ValueError):
    """The entry is not there or not open (the API answers 404 / 409)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def is_worklist_miss(record: CallRecord, settings: Settings) -> bool:
    """A missed or abandoned inbound call from a known number, per the short-abandon setting."""
    if record.direction != "inbound" or not record.external_number:
        return False
    if record.outcome == "missed":
        return True
    if record.outcome == "abandoned":
        return not record.short_abandon or settings.worklist_include_short_abandons
    return False


def is_reach(record: CallRecord) -> bool:
    """An answered call with an outside party: it reaches the caller of earlier misses."""
    return (record.outcome == "answered" and record.direction in ("inbound", "outbound")
            and bool(record.external_number))


async def apply(conn: AsyncConnection, call_id: int, record: CallRecord,
                settings: Settings) -> list[float]:
    """Update the worklist for one stored call (inside the writer's transaction).

    Returns the time to callback of every entry this call handled.
    """
    if is_worklist_miss(record, settings):
        return await _add_miss(conn, call_id, record)
    if is_reach(record):
        return await _reach(conn, call_id, record)
    return []


async def _add_miss(conn: AsyncConnection, call_id: int, record: CallRecord) -> list[float]:
    listed = await conn.scalar(sa.select(worklist_calls.c.entry_id)
                               .where(worklist_calls.c.call_id == call_id))
    if listed is not None:
        return []
    number = record.external_number or ""
    line = record.line or ""
    missed_at = utc(record.arrived_at)
    assert missed_at is not None
    now = datetime.now(UTC)
    entry = (await conn.execute(
        sa.select(worklist_entries.c.id, worklist_entries.c.first_missed_at,
                  worklist_entries.c.last_missed_at)
        .where(worklist_entries.c.number == number, worklist_entries.c.line == line,
               worklist_entries.c.status == "pending"))).first()
    if entry is None:
        entry_id: int = (await conn.execute(
            sa.insert(worklist_entries).values(
                pbx=record.pbx, number=number, line=line, status="pending",
                first_missed_at=missed_at, last_missed_at=missed_at, call_count=1,
                updated_at=now).returning(worklist_entries.c.id))).scalar_one()
        last_missed_at = missed_at
    else:
        entry_id = entry.id
        last_missed_at = max(entry.last_missed_at, missed_at)
        await conn.execute(
            sa.update(worklist_entries).where(worklist_entries.c.id == entry_id).values(
                first_missed_at=min(entry.first_missed_at, missed_at),
                last_missed_at=last_missed_at,
                call_count=worklist_entries.c.call_count + 1, updated_at=now))
    await conn.execute(sa.insert(worklist_calls).values(entry_id=entry_id, call_id=call_id))
    # Out of order: an answer to or from this number already stored after the miss.
    answer = (await conn.execute(
        sa.select(calls.c.id, calls.c.direction, calls.c.answered_at, calls.c.agent,
                  calls.c.agent_name)
        .where(calls.c.external_number == number, calls.c.outcome == "answered",
               calls.c.direction.in_(("inbound", "outbound")),
               calls.c.answered_at >= last_missed_at)
        .order_by(calls.c.answered_at).limit(1))).first()
    if answer is None:
        return []
    return await _handle(conn, [entry_id], answer._mapping)


async def _reach(conn: AsyncConnection, call_id: int, record: CallRecord) -> list[float]:
    answered_at = utc(record.answered_at if record.answered_at is not None
                      else record.arrived_at)
    entry_ids = (await conn.scalars(
        sa.select(worklist_entries.c.id)
        .where(worklist_entries.c.number == record.external_number,
               worklist_entries.c.status == "pending",
               worklist_entries.c.last_missed_at <= answered_at))).all()
    if not entry_ids:
        return []
    return await _handle(conn, list(entry_ids), {
        "id": call_id, "direction": record.direction, "answered_at": answered_at,
        "agent": record.agent, "agent_name": record.agent_name})


async def _handle(conn: AsyncConnection, entry_ids: list[int], call: Any) -> list[float]:
    """Mark entries handled by an answered call (a mapping of calls columns)."""
    handled_at: datetime = call["answered_at"]
    how = "callback" if call["direction"] == "outbound" else "called_again"
    rows = (await conn.execute(
        sa.select(worklist_entries.c.id, worklist_entries.c.first_missed_at)
        .where(worklist_entries.c.id.in_(entry_ids)))).all()
    seconds = []
    for row in rows:
        took = max((handled_at - row.first_missed_at).total_seconds(), 0.0)
        seconds.append(took)
        await conn.execute(
            sa.update(worklist_entries).where(worklist_entries.c.id == row.id).values(
                status="handled", how=how, handled_at=handled_at,
                handled_by=call["agent_name"] or call["agent"], handled_call_id=call["id"],
                time_to_callback_seconds=took, updated_at=datetime.now(UTC)))
    return seconds


async def mark(conn: AsyncConnection, entry_id: int, status: str, who: str | None,
               note: str | None, now: datetime | None = None) -> float | None:
    """A supervisor marks an open entry handled (how=manual) or dismissed.

    Returns the time to callback of a handled entry.
    """
    now = now or datetime.now(UTC)
    row = (await conn.execute(
        sa.select(worklist_entries.c.status, worklist_entries.c.first_missed_at)
        .where(worklist_entries.c.id == entry_id))).first()
    if row is None:
        raise WorklistError(f"no worklist entry {entry_id}", 404)
    if row.status != "pending":
        raise WorklistError(f"worklist entry {entry_id} is already {row.status}", 409)
    values: dict[str, Any] = {"status": status, "handled_at": now, "handled_by": who,
                              "note": note, "updated_at": now}
    took = None
    if status == "handled":
        took = max((now - row.first_missed_at).total_seconds(), 0.0)
        values["how"] = "manual"
        values["time_to_callback_seconds"] = took
    await conn.execute(sa.update(worklist_entries)
                       .where(worklist_entries.c.id == entry_id).values(**values))
    return took


async def pending_summary(conn: AsyncConnection) -> tuple[int, datetime | None]:
    """How many entries are pending and the arrival of the oldest one (for the metrics)."""
    row = (await conn.execute(
        sa.select(sa.func.count(), sa.func.min(worklist_entries.c.first_missed_at))
        .where(worklist_entries.c.status == "pending"))).one()
    oldest = row[1]
    if isinstance(oldest, str):  # SQLite's MIN() loses the column type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(row[0]), oldest
