"""The rotation position shared through PostgreSQL (issue 11): one row per rota line.

Two callhub instances answer the dialplan's FastAGI for the same PBX; each call
must move one position per line, whichever instance answers. `advance` does it
in one statement (INSERT ... ON CONFLICT DO UPDATE ... RETURNING): the row lock
serialises two instances choosing for the same line at once, and the choice is
made inside PostgreSQL from the row as it is then, so the next call always
starts after the agent the previous one was offered.

It knows nothing of rotas: the caller passes the agents it may offer the call
to (agent id and rotation index, sorted by index then id), the line's rotation
(agent ids in order) and the time. PostgreSQL only: SQLite is a single instance,
which keeps its position in the routing state file alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.store.db import driver_connection
from callhub.store.tables import rotation_positions


@dataclass(frozen=True, slots=True)
class StoredPosition:
    """A line's position: the agent offered its last call, that agent's index, when."""

    line: str
    agent: str
    position: int
    moved_at: datetime


# The next candidate after the stored one, cyclically: the previous index is the stored
# agent's index in today's rotation (it may have moved in the rota), else the stored index
# (a swap-in or removed agent: the slot it held). Candidates come sorted by (index, id), so
# their ordinality breaks ties as Python's sort on the id does. No row yet: the first one.
# In PostgreSQL's own placeholders: it runs on the asyncpg connection itself (one prepared
# statement; SQLAlchemy's execution path cost five times the statement's own CPU).
_CANDIDATES = ("unnest($3::text[], $4::integer[]) WITH ORDINALITY AS c(agent, position, n)")
ADVANCE = f"""
INSERT INTO rotation_positions AS rp (line, agent, position, moved_at)
SELECT $1::varchar, c.agent, c.position, $2::timestamptz
  FROM {_CANDIDATES} ORDER BY c.n LIMIT 1
ON CONFLICT (line) DO UPDATE SET (agent, position, moved_at) = (
  SELECT c.agent, c.position, $2::timestamptz FROM {_CANDIDATES}
   ORDER BY ((c.position - COALESCE(array_position($5::text[], rp.agent) - 1, rp.position)
              - 1) % $6 + $6) % $6, c.n
   LIMIT 1)
RETURNING agent, position
"""


async def advance(conn: AsyncConnection, line: str, candidates: Sequence[tuple[str, int]],
                  rotation: Sequence[str], now: datetime) -> tuple[str, int]:
    """Move `line`'s position to the next of `candidates` (non-empty, sorted by index then
    id) and return it (agent id, rotation index). One statement, committed on its own
    (no transaction is open on `conn`), so the row lock is held only while PostgreSQL
    runs it. PostgreSQL (asyncpg) only."""
    if not candidates:
        raise ValueError("advance needs at least one candidate")
    driver = await driver_connection(conn)
    row = await driver.fetchrow(ADVANCE, line, now, [a for a, _ in candidates],
                                [p for _, p in candidates], list(rotation),
                                max(len(rotation), 1))
    return str(row["agent"]), int(row["position"])


async def read_positions(conn: AsyncConnection) -> list[StoredPosition]:
    rows = (await conn.execute(sa.select(rotation_positions))).all()
    return [StoredPosition(r.line, r.agent, r.position, r.moved_at) for r in rows]


async def push_newer(conn: AsyncConnection, positions: Sequence[StoredPosition]) -> int:
    """Store each position that is newer than the line's row (or has none); the later move
    wins. Returns how many rows changed."""
    changed = 0
    for p in positions:
        stmt = pg_insert(rotation_positions).values(
            line=p.line, agent=p.agent, position=p.position, moved_at=p.moved_at)
        stmt = stmt.on_conflict_do_update(
            index_elements=[rotation_positions.c.line],
            set_={"agent": stmt.excluded.agent, "position": stmt.excluded.position,
                  "moved_at": stmt.excluded.moved_at},
            where=rotation_positions.c.moved_at < stmt.excluded.moved_at)
        result = await conn.execute(stmt)
        changed += result.rowcount or 0
    return changed
