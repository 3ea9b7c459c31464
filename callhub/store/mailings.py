"""The report mails already sent (or being sent), so a period is mailed at most once.

A sender claims a period by inserting its row (insert-if-absent): the one
whose insert lands sends, every other daemon or a restarted one sees the row
and does not. A send that fails releases the claim (the row is deleted) so
the next try can claim it again; a claim whose sender died mid-send (no
`sent_at` after `lease`) may be taken over, since a crash cannot release it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store.tables import report_mailings as m
from callhub.store.upsert import insert

DEFAULT_LEASE = timedelta(minutes=15)


def _key(kind: str, start: date) -> sa.ColumnElement[bool]:
    return sa.and_(m.c.period_kind == kind, m.c.period_start == start)


async def claim(conn: AsyncConnection, kind: str, start: date, recipients: Sequence[str], *,
                now: datetime, lease: timedelta = DEFAULT_LEASE) -> bool:
    """True if this caller may send the period's mail (it now holds the claim)."""
    stmt = insert(conn, m).values(period_kind=kind, period_start=start, claimed_at=now,
                                  recipients=",".join(recipients)
                                  ).on_conflict_do_nothing(
        index_elements=["period_kind", "period_start"])
    if (await conn.execute(stmt)).rowcount:
        return True
    taken = await conn.execute(
        sa.update(m).where(_key(kind, start), m.c.sent_at.is_(None),
                           m.c.claimed_at < now - lease)
        .values(claimed_at=now, recipients=",".join(recipients)))
    return bool(taken.rowcount)


async def mark_sent(conn: AsyncConnection, kind: str, start: date, now: datetime) -> None:
    await conn.execute(sa.update(m).where(_key(kind, start)).values(sent_at=now))


async def release(conn: AsyncConnection, kind: str, start: date) -> None:
    """Give the claim up after a failed send (a sent period is never released)."""
    await conn.execute(sa.delete(m).where(_key(kind, start), m.c.sent_at.is_(None)))


async def listing(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every mailing, the newest period first."""
    rows = await conn.execute(sa.select(m).order_by(m.c.period_start.desc(), m.c.period_kind))
    return [dict(r._mapping) for r in rows]
