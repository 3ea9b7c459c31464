"""Follow-up calls: a call gets calls back at set times, by hand or by its category's rule.

The desk rules ask for follow-ups after some matters (24 h and 2 days after an
urgent repair). A follow-up belongs to a call and the call's outside number;
it is `open` until an answered outbound call to that number at or after its
due time closes it (`done`, how=`callback`), a supervisor closes it by hand
(`done`, how=`manual`) or cancels it (`cancelled`). Rule follow-ups are due a
configured delay after the call ended; when a call's category changes, the
open ones of the old category are cancelled and the new rule's are created.
Everything is idempotent, so a keeper may run it again and again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.config import Settings
from callhub.store import rollup
from callhub.store.errors import InvalidTransition, NotApplicable, NotFound
from callhub.store.resolution import rating_values
from callhub.store.tables import calls, followups
from callhub.store.upsert import insert

STATUSES = ("open", "done", "cancelled")
HOWS = ("callback", "manual", "cancelled", "category_changed")
SOURCES = ("rule", "manual")
# A rule is not applied to a call whose last follow-up would be this long overdue
# (so a rule added to the config does not flood the desk with last year's calls).
RULE_HORIZON = timedelta(days=7)



@dataclass(frozen=True, slots=True)
class Closed:
    """A follow-up closed by a callback: its id and how long after its due time."""

    followup_id: int
    call_id: int
    late_seconds: float


async def call_info(conn: AsyncConnection, call_id: int) -> Any:
    """The call's id, pbx, outside number, category and end; NotFound if none."""
    row = (await conn.execute(
        sa.select(calls.c.id, calls.c.pbx, calls.c.external_number, calls.c.category,
                  calls.c.ended_at).where(calls.c.id == call_id))).first()
    if row is None:
        raise NotFound(f"no call {call_id}")
    return row


async def create(conn: AsyncConnection, call_id: int, due: Sequence[datetime], *,
                 now: datetime, who: str | None = None, note: str | None = None,
                 source: str = "manual", category: str | None = None) -> list[int]:
    """Open one follow-up per due time for a call; the ids in due order."""
    call = await call_info(conn, call_id)
    if not call.external_number:
        raise NotApplicable(f"call {call_id} has no outside number to call back")
    ids = []
    for at in sorted(due):
        stmt = insert(conn, followups).values(
            call_id=call_id, pbx=call.pbx, number=call.external_number, due_at=at,
            status="open", source=source, category=category, created_at=now,
            created_by=who, note=note, updated_at=now)
        if source == "rule":  # a rule applied at once by two (keeper, request) lands once
            stmt = stmt.on_conflict_do_nothing(
                index_elements=["call_id", "category", "due_at"],
                index_where=followups.c.source == "rule")
        made = (await conn.execute(stmt.returning(followups.c.id))).scalar()
        if made is not None:
            ids.append(made)
    return ids


# A rule follow-up cancelled because its call's category changed (reopened if it returns).
_CANCELLED_BY_CHANGE = sa.and_(followups.c.status == "cancelled",
                               followups.c.how == "category_changed")


async def apply_rule(conn: AsyncConnection, call_id: int, settings: Settings, *,
                     now: datetime) -> list[int]:
    """Bring a call's rule follow-ups in line with its category; the ids created or
    reopened.

    Open rule follow-ups of another category are cancelled; those of the current
    category that a change of category cancelled are open again (a category set by
    mistake and put back loses nothing); the rule of the current category is applied
    once (never again after its follow-ups closed).
    """
    call = await call_info(conn, call_id)
    f = followups.c
    await conn.execute(
        sa.update(followups)
        .where(f.call_id == call_id, f.source == "rule", f.status == "open",
               sa.or_(f.category != call.category, sa.literal(call.category is None)))
        .values(status="cancelled", how="category_changed", closed_at=now, updated_at=now))
    delays = settings.followup_rules.get(call.category or "")
    if not delays or not call.external_number:
        return []
    reopened = list((await conn.scalars(
        sa.update(followups)
        .where(f.call_id == call_id, f.source == "rule", f.category == call.category,
               _CANCELLED_BY_CHANGE)
        .values(status="open", how=None, closed_at=None, updated_at=now)
        .returning(f.id))).all())
    if reopened:
        return sorted(reopened)
    done = await conn.scalar(sa.select(sa.func.count()).select_from(followups).where(
        f.call_id == call_id, f.source == "rule", f.category == call.category))
    if done:
        return []
    due = [call.ended_at + timedelta(seconds=d) for d in delays]
    return await create(conn, call_id, due, now=now, source="rule", category=call.category,
                        who="rule")


async def sync_rules(conn: AsyncConnection, settings: Settings, *, now: datetime) -> int:
    """Apply the category rules to every recent call that needs it; follow-ups created.

    Two indexed reads: open rule follow-ups whose call changed category (few),
    and the calls of the last days (arrival index) in a rule category without them
    or with some of them cancelled by an earlier change of category.
    """
    f = followups.c
    c = calls.c
    changed = (await conn.scalars(
        sa.select(f.call_id).join(calls, c.id == f.call_id)
        .where(f.source == "rule", f.status == "open",
               sa.or_(c.category.is_(None), f.category != c.category)).distinct())).all()
    needing: list[int] = []
    if settings.followup_rules:
        longest = max(max(d) for d in settings.followup_rules.values())
        since = now - RULE_HORIZON - timedelta(seconds=longest)
        of_its_rule = (f.call_id == c.id, f.source == "rule", f.category == c.category)
        # Without its rule's follow-ups, or with some a change of category cancelled.
        applied = sa.exists().where(*of_its_rule, ~_CANCELLED_BY_CHANGE)
        put_back = sa.exists().where(*of_its_rule, _CANCELLED_BY_CHANGE)
        needing = list((await conn.scalars(
            sa.select(c.id).where(c.arrived_at >= since,
                                  c.category.in_(list(settings.followup_rules)),
                                  c.external_number.is_not(None), ~applied | put_back)
        )).all())
    created = 0
    for call_id in sorted({*changed, *needing}):
        created += len(await apply_rule(conn, call_id, settings, now=now))
    return created


async def close_by_callbacks(conn: AsyncConnection) -> list[Closed]:
    """Close open follow-ups that an answered outbound call at or after their due time reached."""
    f = followups.c
    c = calls.c
    rows = (await conn.execute(
        sa.select(f.id, f.due_at, c.id.label("call_id"), c.answered_at, c.agent, c.agent_name)
        .join(calls, sa.and_(c.external_number == f.number, c.direction == "outbound",
                             c.outcome == "answered", c.answered_at >= f.due_at))
        .where(f.status == "open").order_by(f.id, c.answered_at, c.id))).all()
    closed: list[Closed] = []
    seen: set[int] = set()
    for row in rows:
        if row.id in seen:
            continue
        seen.add(row.id)
        await conn.execute(sa.update(followups).where(f.id == row.id, f.status == "open").values(
            status="done", how="callback", closed_at=row.answered_at,
            closed_by=row.agent_name or row.agent, closed_call_id=row.call_id,
            updated_at=row.answered_at))
        closed.append(Closed(row.id, row.call_id,
                             max((row.answered_at - row.due_at).total_seconds(), 0.0)))
    return closed


async def close(conn: AsyncConnection, followup_id: int, status: str, *, now: datetime,
                who: str | None = None, note: str | None = None,
                outcome: str | None = None, satisfaction: str | None = None,
                rated_by: str | None = None) -> None:
    """A supervisor closes an open follow-up: `done` (how=manual) or `cancelled`; a done
    one may record what it found (callhub/store/resolution.py)."""
    if status not in ("done", "cancelled"):
        raise ValueError(f"status must be done or cancelled, not {status!r}")
    rating = rating_values(outcome, satisfaction, now=now,
                           who=rated_by if rated_by is not None else who)
    if rating and status != "done":
        raise ValueError("only a done follow-up has an outcome or satisfaction")
    found = (await conn.execute(sa.select(followups.c.status, followups.c.call_id)
                                .where(followups.c.id == followup_id))).first()
    if found is None:
        raise NotFound(f"no follow-up {followup_id}")
    current, call_id = found
    if current != "open":
        raise InvalidTransition(f"follow-up {followup_id} is already {current}")
    values: dict[str, Any] = {"status": status, "closed_at": now, "closed_by": who,
                              "how": "manual" if status == "done" else "cancelled",
                              "updated_at": now}
    if note is not None:
        values["note"] = note
    # Guarded by the status, so of two closes at once the second updates nothing.
    closed = await conn.execute(sa.update(followups)
                                .where(followups.c.id == followup_id,
                                       followups.c.status == "open")
                                .values(**values, **rating))
    if closed.rowcount != 1:
        raise InvalidTransition(f"follow-up {followup_id} was closed meanwhile")
    if satisfaction is not None:  # /stats counts satisfactions from the rollup
        await rollup.refresh_call(conn, call_id)


@dataclass(frozen=True, slots=True)
class FollowupFilter:
    status: str | None = None
    due_by: datetime | None = None  # only those due at or before this
    due_after: datetime | None = None  # only those due after this
    call_id: int | None = None
    number: str | None = None


FOLLOWUP_COLUMNS = (*followups.c, calls.c.caller_name, calls.c.line, calls.c.direction,
                    calls.c.arrived_at.label("call_arrived_at"),
                    calls.c.category.label("call_category"))


@dataclass(frozen=True, slots=True)
class FollowupPosition:
    """Where a page ended, in the list's order: (open first rank, due time, id)."""

    rank: int  # 0 open, 1 closed
    due_at: datetime
    id: int


def position_of(row: dict[str, Any]) -> FollowupPosition:
    return FollowupPosition(0 if row["status"] == "open" else 1, row["due_at"], row["id"])


async def list_followups(conn: AsyncConnection, flt: FollowupFilter, *, limit: int = 100,
                         after: FollowupPosition | None = None) -> list[dict[str, Any]]:
    """Follow-ups, open first, then by due time; each with its call's name, line, category.
    After a position (keyset): a follow-up closed or added while a supervisor pages on
    neither repeats nor hides another, as an offset did."""
    f = followups.c
    where: list[sa.ColumnElement[bool]] = []
    if flt.status is not None:
        where.append(f.status == flt.status)
    if flt.due_by is not None:
        where.append(f.due_at <= flt.due_by)
    if flt.due_after is not None:
        where.append(f.due_at > flt.due_after)
    if flt.call_id is not None:
        where.append(f.call_id == flt.call_id)
    if flt.number is not None:
        where.append(f.number == flt.number)
    open_first = sa.case((f.status == "open", 0), else_=1)
    if after is not None:
        at = sa.bindparam("after_at", after.due_at, type_=f.due_at.type)
        where.append(sa.or_(open_first > after.rank, sa.and_(
            open_first == after.rank, sa.tuple_(f.due_at, f.id) > sa.tuple_(at, after.id))))
    rows = (await conn.execute(
        sa.select(*FOLLOWUP_COLUMNS).join(calls, calls.c.id == f.call_id).where(*where)
        .order_by(open_first, f.due_at, f.id).limit(limit))).mappings().all()
    return [dict(r) for r in rows]


async def get_followup(conn: AsyncConnection, followup_id: int) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(*FOLLOWUP_COLUMNS)
                              .join(calls, calls.c.id == followups.c.call_id)
                              .where(followups.c.id == followup_id))).mappings().first()
    return dict(row) if row is not None else None


def overdue(row: dict[str, Any], now: datetime, overdue_seconds: float) -> bool:
    """Still open `overdue_seconds` after it was due."""
    return bool(row["status"] == "open"
                and row["due_at"] + timedelta(seconds=overdue_seconds) <= now)


async def count_overdue(conn: AsyncConnection, now: datetime, overdue_seconds: float) -> int:
    """Open follow-ups that were due more than `overdue_seconds` ago (the gauge's value)."""
    return int(await conn.scalar(
        sa.select(sa.func.count()).select_from(followups)
        .where(followups.c.status == "open",
               followups.c.due_at <= now - timedelta(seconds=overdue_seconds))) or 0)
