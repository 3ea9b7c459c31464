"""Queue the SMS after the call in the transaction that saves the call (the outbox).

For each record the writer saves, `plan_sms` says whether and what to send;
the number's history (the last message queued or sent to it within the
quiet time, counting those queued earlier in the same batch, and the
opt-out list) decides whether it goes. The rows are inserted with
`ON CONFLICT (idempotency_key) DO NOTHING`, so a replayed call queues
nothing twice. A handful of statements per batch, whatever its size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.records import CallRecord
from callhub.sms.decide import AgentContact, SmsPlan, check_history, plan_sms
from callhub.sms.settings import SmsSettings
from callhub.store.chunks import chunks, in_chunk
from callhub.store.tables import sms_optouts, sms_outbox, utc
from callhub.store.upsert import insert

# interface -> (agent name, mobile) from the rota; None when the rota does not know it.
ContactLookup = Callable[[str], tuple[str | None, str | None] | None]
# Statuses that count as "an SMS went (or is going) to this number".
LIVE_STATUSES = ("queued", "sending", "sent")


@dataclass(slots=True)
class Queued:
    """What one batch queued, and which calls got nothing and why (for the metrics)."""

    queued: int = 0
    skipped: list[tuple[str | None, str]] = field(default_factory=list)  # (line, reason)


def contact_of(record: CallRecord, contacts: ContactLookup | None) -> AgentContact | None:
    """The answering agent's name and mobile from the rota, else the record's name."""
    if record.agent is None:
        return None
    found = contacts(record.agent) if contacts is not None else None
    if found is None:
        return AgentContact(name=record.agent_name)
    name, mobile = found
    return AgentContact(name=name or record.agent_name, mobile=mobile)


async def _history(conn: AsyncConnection, numbers: Sequence[str], since: datetime
                   ) -> tuple[dict[str, float], set[str]]:
    """Per number the last live message queued since `since`, and the opted-out numbers."""
    last: dict[str, float] = {}
    opted: set[str] = set()
    for part in chunks(sorted(set(numbers)), in_chunk(conn)):
        rows = await conn.execute(
            sa.select(sms_outbox.c.to_number, sa.func.max(sms_outbox.c.created_at))
            .where(sms_outbox.c.to_number.in_(part),
                   sms_outbox.c.status.in_(LIVE_STATUSES),
                   sms_outbox.c.created_at >= since)
            .group_by(sms_outbox.c.to_number))
        for number, at in rows:
            # max() over a TypeDecorator column comes back raw on SQLite.
            stamp = datetime.fromisoformat(at) if isinstance(at, str) else at
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            last[number] = stamp.timestamp()
        opted |= set((await conn.execute(
            sa.select(sms_optouts.c.number).where(sms_optouts.c.number.in_(part)))).scalars())
    return last, opted


def outbox_row(plan: SmsPlan, call_id: int | None, now: float) -> dict[str, object]:
    return {
        "idempotency_key": plan.idempotency_key, "pbx": plan.pbx, "linkedid": plan.linkedid,
        "call_id": call_id, "kind": plan.kind, "line": plan.line, "to_number": plan.to,
        "text": plan.text, "params": dict(plan.params), "template_code": plan.template_code,
        "status": "queued", "attempts": 0, "next_attempt_at": utc(now),
        "call_ended_at": utc(plan.call_ended_at), "created_at": utc(now),
    }


async def queue_sms(conn: AsyncConnection, records: Sequence[CallRecord], ids: Sequence[int],
                    settings: SmsSettings, contacts: ContactLookup | None = None,
                    now: float | None = None) -> Queued:
    """Plan, check and insert the SMS of these saved calls (`ids` in record order)."""
    now = time.time() if now is None else now
    out = Queued()
    plans: list[tuple[SmsPlan, int]] = []
    for record, call_id in zip(records, ids, strict=True):
        plan = plan_sms(record, settings, contact_of(record, contacts), now=now)
        if isinstance(plan, SmsPlan):
            plans.append((plan, call_id))
        elif plan.reason not in ("not_inbound", "incomplete"):
            out.skipped.append((plan.line, plan.reason))
    if not plans:
        return out
    since = datetime.fromtimestamp(now, UTC) - timedelta(seconds=settings.quiet_seconds)
    last, opted = await _history(conn, [p.to for p, _ in plans], since)
    keys = [p.idempotency_key for p, _ in plans]
    queued_before = set((await conn.execute(
        sa.select(sms_outbox.c.idempotency_key)
        .where(sms_outbox.c.idempotency_key.in_(keys)))).scalars())
    rows = []
    for plan, call_id in plans:
        if plan.idempotency_key in queued_before:
            continue  # this call's message is queued already (a replay): not a skip
        decision = check_history(plan, settings, opted_out=plan.to in opted,
                                 last_sms_at=last.get(plan.to), now=now)
        if not decision.send:
            out.skipped.append((plan.line, decision.reason or "quiet_time"))
            continue
        rows.append(outbox_row(plan, call_id, now))
        last[plan.to] = now  # a second call from this number in this batch waits its turn
    if rows:
        stmt = insert(conn, sms_outbox).on_conflict_do_nothing(
            index_elements=["idempotency_key"])
        await conn.execute(stmt, rows)
        out.queued = len(rows)
    return out
