"""A call's resolution and a follow-up's satisfaction: the desk's measure of resolved work.

Issue 13 asks for "answer rate and resolution rate" and for follow-up calls that ask
whether the caller was satisfied. A supervisor sets a call's resolution (`resolved`,
`referred` to a department, `pending`, `unresolved`) through the API, which records who
and when; a follow-up that is done records what it found (`outcome`, the matter's
state as the caller tells it) and the caller's `satisfaction`. Both live in columns the
writer's upsert never names, so re-storing a call (a replay, an AMI record replacing a
CEL one) keeps them. The rates are in callhub/store/resolution_stats.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store import rollup
from callhub.store.errors import InvalidTransition, NotFound
from callhub.store.tables import RESOLUTIONS, SATISFACTIONS, calls, followups

__all__ = ["RATED", "RESOLUTIONS", "SATISFACTIONS", "rate_followup", "rating_values",
           "set_resolution"]
# Answers that count in the satisfaction rate: the caller was reached and gave one.
RATED = ("satisfied", "fair", "dissatisfied")
MAX_DEPARTMENT = 128


async def set_resolution(conn: AsyncConnection, call_id: int, resolution: str | None,
                         department: str | None, *, now: datetime, who: str) -> None:
    """Set (or with None clear) a call's resolution; `department` only with `referred`."""
    if resolution is not None and resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    if (resolution == "referred") != (department is not None):
        raise ValueError("a department goes with resolution referred, and only with it")
    values: dict[str, Any] = (
        {"resolution": None, "resolution_department": None, "resolution_at": None,
         "resolution_by": None} if resolution is None else
        {"resolution": resolution, "resolution_department": department,
         "resolution_at": now, "resolution_by": who})
    result = await conn.execute(sa.update(calls).where(calls.c.id == call_id)
                                .values(**values, updated_at=now))
    if not result.rowcount:
        raise NotFound(f"no call {call_id}")
    await rollup.refresh_call(conn, call_id)  # /stats counts resolutions from the rollup


def rating_values(outcome: str | None, satisfaction: str | None, *, now: datetime,
                  who: str | None) -> dict[str, Any]:
    """The follow-up columns that record what a done follow-up found ({} when nothing)."""
    if outcome is not None and outcome not in RESOLUTIONS:
        raise ValueError(f"outcome must be one of {', '.join(RESOLUTIONS)}")
    if satisfaction is not None and satisfaction not in SATISFACTIONS:
        raise ValueError(f"satisfaction must be one of {', '.join(SATISFACTIONS)}")
    if outcome is None and satisfaction is None:
        return {}
    values: dict[str, Any] = {"rated_at": now, "rated_by": who}
    if outcome is not None:
        values["outcome"] = outcome
    if satisfaction is not None:
        values["satisfaction"] = satisfaction
    return values


async def rate_followup(conn: AsyncConnection, followup_id: int, *, outcome: str | None,
                        satisfaction: str | None, note: str | None, now: datetime,
                        who: str | None) -> None:
    """Record the outcome, satisfaction and/or note of a done follow-up (one closed by a
    callback has none yet); InvalidTransition when it is open or cancelled."""
    found = (await conn.execute(sa.select(followups.c.status, followups.c.call_id)
                                .where(followups.c.id == followup_id))).first()
    if found is None:
        raise NotFound(f"no follow-up {followup_id}")
    current, call_id = found
    if current != "done":
        raise InvalidTransition(f"follow-up {followup_id} is {current}, not done: "
                                "close it with POST /followups/{id}/done")
    values = rating_values(outcome, satisfaction, now=now, who=who)
    if note is not None:
        values["note"] = note
    await conn.execute(sa.update(followups).where(followups.c.id == followup_id)
                       .values(**values, updated_at=now))
    if satisfaction is not None:  # /stats counts satisfactions from the rollup
        await rollup.refresh_call(conn, call_id)
