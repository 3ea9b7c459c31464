"""The `sms_outbox` table as the `Outbox` the SMS worker drains (callhub.sms.Outbox).

`claim` leases due messages (status `queued` whose next attempt is due, or
`sending` whose lease ran out: a worker died mid-send) by setting them
`sending` until `lease_until`, in one short transaction; on PostgreSQL
`FOR UPDATE SKIP LOCKED` keeps two senders from claiming one message.
A resend after a lapsed lease carries the same idempotency key, so the
gateway drops the repeat. A claimed message says whether its number was
opted out since it was queued (the worker then fails it unsent).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.sms.outbox import OutboxMessage
from callhub.store.db import Database
from callhub.store.tables import PROVIDER_ID_LENGTH, sms_optouts, sms_outbox, utc
from callhub.store.upsert import insert


def _seconds(value: datetime) -> float:
    return value.timestamp()


class TableOutbox:
    """An Outbox on the database's `sms_outbox` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[OutboxMessage]:
        t = sms_outbox.c
        at = utc(now)
        due = sa.or_(sa.and_(t.status == "queued", t.next_attempt_at <= at),
                     sa.and_(t.status == "sending", t.lease_until <= at))
        async with self.db.begin() as conn:
            pick = sa.select(t.id).where(due).order_by(t.next_attempt_at, t.id).limit(limit)
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            ids = list((await conn.execute(pick)).scalars())
            if not ids:
                return []
            await conn.execute(
                sa.update(sms_outbox).where(t.id.in_(ids))
                .values(status="sending", lease_until=utc(now + lease_seconds),
                        attempts=t.attempts + 1))
            opted = t.to_number.in_(sa.select(sms_optouts.c.number)).label("opted_out")
            rows = (await conn.execute(
                sa.select(sms_outbox, opted).where(t.id.in_(ids))
                .order_by(t.next_attempt_at, t.id))).mappings().all()
        return [OutboxMessage(
            id=r["id"], to=r["to_number"], text=r["text"], call_id=f"{r['pbx']}:{r['linkedid']}",
            idempotency_key=r["idempotency_key"], kind=r["kind"], line=r["line"],
            call_ended_at=_seconds(r["call_ended_at"]), created_at=_seconds(r["created_at"]),
            params=dict(r["params"] or {}), template_code=r["template_code"],
            attempts=r["attempts"], opted_out=bool(r["opted_out"])) for r in rows]

    async def _set(self, message_id: int, **values: object) -> None:
        async with self.db.begin() as conn:
            await conn.execute(sa.update(sms_outbox).where(sms_outbox.c.id == message_id)
                               .values(lease_until=None, **values))

    async def mark_sent(self, message_id: int, at: float, provider_id: str | None) -> None:
        # The gateway's id is whatever it answers (a site's webhook: a URL, a token): cut
        # to the column, or PostgreSQL refuses the row at every try and the message is
        # sent again after every lease.
        cut = provider_id[:PROVIDER_ID_LENGTH] if provider_id is not None else None
        await self._set(message_id, status="sent", sent_at=utc(at), provider_id=cut)

    async def mark_retry(self, message_id: int, at: float, error: str, *,
                         counted: bool = True) -> None:
        await self._set(message_id, status="queued", next_attempt_at=utc(at),
                        last_error=error[:500],
                        **({} if counted else {"attempts": sms_outbox.c.attempts - 1}))

    async def mark_failed(self, message_id: int, at: float, error: str) -> None:
        await self._set(message_id, status="expired" if error == "expired" else "failed",
                        last_error=error[:500])

    async def retry_now(self, errors: Collection[str], now: float,
                        limit: int | None = None) -> int:
        t = sms_outbox.c
        held = sa.and_(t.status == "queued", t.last_error.in_([e[:500] for e in errors]),
                       t.next_attempt_at > utc(now))
        if limit is not None:  # those due soonest
            held = sa.and_(held, t.id.in_(sa.select(t.id).where(held)
                                          .order_by(t.next_attempt_at, t.id).limit(limit)))
        async with self.db.begin() as conn:
            result = await conn.execute(
                sa.update(sms_outbox).where(held).values(next_attempt_at=utc(now)))
        return int(result.rowcount)


# -- what the API reads and changes ---------------------------------------------------

OUTBOX_COLUMNS = [c for c in sms_outbox.c if c.name not in ("lease_until",)]


async def list_outbox(conn: AsyncConnection, *, status: str | None = None,
                      start: datetime | None = None, end: datetime | None = None,
                      limit: int = 50, after: tuple[datetime, int] | None = None
                      ) -> list[dict[str, Any]]:
    """Outbox rows newest first by (created_at, id), filtered, after a keyset position."""
    t = sms_outbox.c
    stmt = sa.select(*OUTBOX_COLUMNS)
    if status is not None:
        stmt = stmt.where(t.status == status)
    if start is not None:
        stmt = stmt.where(t.created_at >= start)
    if end is not None:
        stmt = stmt.where(t.created_at < end)
    if after is not None:
        at, last_id = after
        at_param = sa.literal(at, t.created_at.type)
        stmt = stmt.where(t.created_at <= at_param,
                          sa.tuple_(t.created_at, t.id) < sa.tuple_(at_param,
                                                                    sa.literal(last_id)))
    stmt = stmt.order_by(t.created_at.desc(), t.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]


async def list_optouts(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(sa.select(sms_optouts).order_by(sms_optouts.c.number))
    return [dict(r) for r in rows.mappings().all()]


async def add_optout(conn: AsyncConnection, number: str, by: str | None,
                     now: datetime) -> bool:
    """Opt a number out; False when it was already."""
    stmt = insert(conn, sms_optouts).on_conflict_do_nothing(index_elements=["number"])
    result = await conn.execute(stmt, {"number": number, "created_at": now, "by": by})
    return bool(result.rowcount)


async def remove_optout(conn: AsyncConnection, number: str) -> bool:
    result = await conn.execute(sa.delete(sms_optouts).where(sms_optouts.c.number == number))
    return bool(result.rowcount)
