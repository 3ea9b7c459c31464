"""The rotation position shared through PostgreSQL (issue 11): one row per rota line.

Two callhub instances answer the dialplan's FastAGI for the same PBX; each call
must move one position per line, whichever instance answers. `advance` does it
in one statement (the row read FOR UPDATE, the moves walked by a recursive CTE,
then INSERT ... ON CONFLICT DO UPDATE): the row lock serialises two instances
choosing for the same line at once, and the choice is made inside PostgreSQL
from the row as it is then, so the next call always starts after the agent the
previous one was offered. Calls that arrive together move the line together:
one statement moves it k places and returns the k choices in order.

It knows nothing of rotas: the caller passes the agents it may offer the call
to (agent id and rotation index, sorted by index then id), the line's rotation
(agent ids in order) and the time. PostgreSQL only: SQLite is a single instance,
which keeps its position in the routing state file alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


# `places` moves at once, each as one call's move would be: the next candidate after the
# previous agent, cyclically (after that agent's index in today's rotation (it may have
# moved in the rota); else after the slot it took, for a swap-in (`$8`, the line's covers);
# else from its stored index, for an agent since removed (those after it moved up into its
# slot); no row yet: the first candidate). Candidates come sorted by (index, id),
# so their ordinality breaks ties as Python's sort on the id does. The recursive CTE walks
# the steps from the row read FOR UPDATE, so the pair still waits on the row's lock and each
# statement starts where the last one left the row. The row is written once, with the last
# step and `$2`, the last call's time. A row inserted meanwhile by the other instance (the
# line's very first moves, both at once) makes the insert do nothing and the statement
# return no rows: run again, it reads that row. In PostgreSQL's own placeholders: it runs
# on the asyncpg connection itself (one prepared statement; SQLAlchemy's execution path
# cost five times the statement's own CPU).
ADVANCE = """
WITH RECURSIVE
candidate AS MATERIALIZED (
    SELECT * FROM unnest($3::text[], $4::integer[]) WITH ORDINALITY AS c(agent, position, n)),
stored AS MATERIALIZED (
    SELECT agent, position FROM rotation_positions WHERE line = $1::varchar FOR UPDATE),
step(i, agent, position) AS (
    SELECT 0, s.agent::text, s.position FROM (VALUES (1)) AS one(x) LEFT JOIN stored s ON true
  UNION ALL
    SELECT p.i + 1, nx.agent, nx.position FROM step p CROSS JOIN LATERAL (
        SELECT c.agent, c.position FROM candidate c
         ORDER BY CASE WHEN p.agent IS NULL THEN 0 ELSE
                  ((c.position - COALESCE(array_position($5::text[], p.agent),
                                          p.position + (p.agent = ANY($8::text[]))::integer))
                    % $6 + $6) % $6 END, c.n
         LIMIT 1) nx
     WHERE p.i < $7),
moved AS (
    INSERT INTO rotation_positions AS rp (line, agent, position, moved_at)
    SELECT $1::varchar, s.agent, s.position, $2::timestamptz FROM step s WHERE s.i = $7
    ON CONFLICT (line) DO UPDATE SET (agent, position, moved_at) =
        (EXCLUDED.agent, EXCLUDED.position, EXCLUDED.moved_at)
     WHERE EXISTS (SELECT FROM stored)
    RETURNING 1)
SELECT s.agent, s.position FROM step s
 WHERE s.i > 0 AND EXISTS (SELECT FROM moved) ORDER BY s.i
"""
_ATTEMPTS = 3  # the second finds the row; a third only if it was deleted meanwhile


async def advance(conn: AsyncConnection, line: str, candidates: Sequence[tuple[str, int]],
                  rotation: Sequence[str], now: datetime, places: int = 1,
                  covers: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Move `line`'s position `places` times to the next of `candidates` (non-empty, sorted
    by index then id) and return each place in order (agent id, rotation index): what
    `places` calls one after another would get. `covers`: the line's swap-ins (agents of no
    rotation who take an absent one's slot). One statement, committed on its own (no
    transaction is open on `conn`), so the row lock is held only while PostgreSQL runs it.
    PostgreSQL (asyncpg) only."""
    return await advance_on(await driver_connection(conn), line, candidates, rotation, now,
                            places, covers)


async def advance_on(driver: Any, line: str, candidates: Sequence[tuple[str, int]],
                     rotation: Sequence[str], now: datetime, places: int = 1,
                     covers: Sequence[str] = ()) -> list[tuple[str, int]]:
    """`advance` on the asyncpg connection itself: for a caller that keeps its connection
    and took the driver's once (SQLAlchemy's `get_raw_connection` is a greenlet switch,
    ~25 us of CPU a statement, a fifth of a lone routed call's in SharedPositions)."""
    if not candidates:
        raise ValueError("advance needs at least one candidate")
    if places < 1:
        raise ValueError("advance moves at least one place")
    args = (line, now, [a for a, _ in candidates], [p for _, p in candidates],
            list(rotation), max(len(rotation), 1), places, list(covers))
    for _ in range(_ATTEMPTS):
        rows = await driver.fetch(ADVANCE, *args)
        if rows:
            return [(str(r["agent"]), int(r["position"])) for r in rows]
    raise RuntimeError(f"rotation row of {line!r} neither inserted nor updated")


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
