"""Quarantined calls stored again once their cause is mended (`callhub db restore`).

The writer quarantines a call the database refused for a reason of its own (a
site's trigger, a constraint, a value too long for a column an admin narrowed).
Once the admin has mended that, each call is stored as the writer would have
stored it, worklist and rollups included, and its quarantine row deleted in
the same transaction: a call restored twice, or stored meanwhile, is still
stored once. A call refused again keeps its row and says why. A damaged spool
line kept there is no call record and stays for the admin to read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from callhub.config import Settings
from callhub.records import CallRecord, bounded
from callhub.store.db import Database
from callhub.store.failures import describe
from callhub.store.save import save_calls
from callhub.store.tables import quarantine


@dataclass(slots=True)
class Restored:
    """What a restore did: the rows stored again, those kept (and why), ids not found."""

    stored: list[int] = field(default_factory=list)
    kept: list[tuple[int, str]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


async def restore(db: Database, settings: Settings, ids: Sequence[int] | None) -> Restored:
    """Store the quarantined calls `ids` (None: all of them, oldest first) again, one
    transaction each."""
    query = sa.select(quarantine.c.id, quarantine.c.record).order_by(quarantine.c.id)
    if ids is not None:
        query = query.where(quarantine.c.id.in_(list(ids)))
    async with db.connection() as conn:
        found = [(row.id, row.record) for row in await conn.execute(query)]
    out = Restored(missing=sorted(set(ids or ()) - {qid for qid, _ in found}))
    for qid, text in found:
        try:
            record = bounded(CallRecord.from_dict(json.loads(text)))
        except Exception as exc:  # a damaged spool line, or a record of another shape
            out.kept.append((qid, f"not a call record ({type(exc).__name__})"))
            continue
        try:
            async with db.begin() as conn:
                await save_calls(conn, [record], settings)
                await conn.execute(sa.delete(quarantine).where(quarantine.c.id == qid))
        except Exception as exc:  # refused again: the row stays, with the new reason shown
            out.kept.append((qid, describe(exc)))
            continue
        out.stored.append(qid)
    return out
