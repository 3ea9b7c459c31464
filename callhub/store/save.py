"""Write finished call records: an upsert per call, its attempts replaced, the worklist updated.

Everything here runs inside the caller's transaction, so a batch is all or
nothing and writing the same batch again (a spool replayed after a crash)
changes nothing: `(pbx, linkedid)` is the key, attempts are replaced, and
the worklist skips calls it already lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.config import Settings
from callhub.records import CallRecord, iso
from callhub.store import worklist
from callhub.store.tables import agents, attempts, calls, utc

CALL_KEY = ("pbx", "linkedid")


def call_row(record: CallRecord, now: datetime) -> dict[str, Any]:
    """A CallRecord as a `calls` row (no id, no supervisor fields)."""
    return {
        "pbx": record.pbx,
        "linkedid": record.linkedid,
        "direction": record.direction,
        "line": record.line,
        "called_number": record.called_number,
        "caller_number": record.caller_number,
        "caller_name": record.caller_name,
        "external_number": record.external_number,
        "arrived_at": utc(record.arrived_at),
        "ring_started_at": utc(record.ring_started_at),
        "answered_at": utc(record.answered_at),
        "ended_at": utc(record.ended_at),
        "ring_seconds": record.ring_seconds,
        "rings": record.rings,
        "wait_seconds": record.wait_seconds,
        "talk_seconds": record.talk_seconds,
        "hold_seconds": record.hold_seconds,
        "outcome": record.outcome,
        "reason": record.reason,
        "voicemail": record.voicemail,
        "short_abandon": record.short_abandon,
        "agent": record.agent,
        "agent_name": record.agent_name,
        "hangup_by": record.hangup_by,
        "hangup_cause": record.hangup_cause,
        "queue": record.queue,
        "incomplete": record.incomplete,
        "transfers": [{"type": t.type, "to": t.to, "at": iso(t.at)} for t in record.transfers],
        "updated_at": now,
    }


def _insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """The dialect's INSERT that knows ON CONFLICT (both SQLite and PostgreSQL do)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def upsert_call(conn: AsyncConnection, record: CallRecord, now: datetime) -> int:
    """Insert or update one call by (pbx, linkedid); replace its attempts; return its id."""
    row = call_row(record, now)
    stmt = _insert(conn, calls).values(**row)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(CALL_KEY),
        set_={k: stmt.excluded[k] for k in row if k not in CALL_KEY},
    ).returning(calls.c.id)
    call_id: int = (await conn.execute(stmt)).scalar_one()
    await conn.execute(sa.delete(attempts).where(attempts.c.call_id == call_id))
    if record.attempts:
        await conn.execute(sa.insert(attempts), [
            {
                "call_id": call_id,
                "seq": seq,
                "interface": a.interface,
                "agent_name": a.agent_name,
                "offered_at": utc(a.offered_at),
                "ring_started_at": utc(a.ring_started_at),
                "ended_at": utc(a.ended_at),
                "result": a.result,
                "ring_seconds": a.ring_seconds,
            }
            for seq, a in enumerate(record.attempts, start=1)
        ])
    return call_id


async def upsert_agent(conn: AsyncConnection, pbx: str, interface: str, name: str | None,
                       now: datetime) -> None:
    """Remember an agent device and its configured name."""
    stmt = _insert(conn, agents).values(pbx=pbx, interface=interface, name=name, updated_at=now)
    set_: dict[str, Any] = {"updated_at": stmt.excluded.updated_at}
    if name is not None:
        set_["name"] = stmt.excluded.name
    await conn.execute(stmt.on_conflict_do_update(index_elements=["pbx", "interface"],
                                                  set_=set_))


@dataclass(slots=True)
class Saved:
    """What a batch did: the call ids (in record order) and times to callback it settled."""

    ids: list[int] = field(default_factory=list)
    callback_seconds: list[float] = field(default_factory=list)


async def save_calls(conn: AsyncConnection, records: Sequence[CallRecord],
                     settings: Settings) -> Saved:
    """Store a batch of records in the current transaction."""
    now = datetime.now(UTC)
    saved = Saved()
    for record in records:
        call_id = await upsert_call(conn, record, now)
        if record.agent:
            await upsert_agent(conn, record.pbx, record.agent, record.agent_name, now)
        saved.callback_seconds += await worklist.apply(conn, call_id, record, settings)
        saved.ids.append(call_id)
    return saved


async def sync_agents(conn: AsyncConnection, settings: Settings) -> None:
    """Copy the configured agents of every PBX into the agents table."""
    now = datetime.now(UTC)
    for pbx in settings.pbxs:
        for interface, name in pbx.agents.items():
            await upsert_agent(conn, pbx.name, interface, name, now)
