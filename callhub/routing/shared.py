"""The rotation position shared by a pair of instances through PostgreSQL, the file as backup.

Two `callhub run` on two hosts answer the dialplan's FastAGI (it asks the first
and, when that fails, the second). Each call moves its line's position once in
PostgreSQL (callhub.store.rotation.advance, one atomic statement), so the pair
goes round the rotation as one instance does. Every move is mirrored into the
local state file with the same time.

When PostgreSQL does not answer within `timeout` (0.25 s: the dialplan is
waiting), that call and every following one are decided from the local file
at once (no call waits for a dead database twice), `routing.positions_local`
is logged and `callhub_route_positions_shared` drops to 0. A background loop
(`run`) tries the database every `retry_seconds`; when it answers, positions
reconcile before sharing resumes: each line's later move wins (the local
file's positions moved while the database was away are stored where they are
newer than the row, by their time), then the rows are copied into the file.
So after an outage both instances continue from the last call routed by either
of them; during one, each goes round from its own file (two calls in a row may
then start at the same agent).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from callhub.routing.model import Line
from callhub.routing.onduty import DutySlot
from callhub.routing.state import RotationState
from callhub.store import rotation
from callhub.store.db import Database

log = structlog.get_logger(__name__)

TIMEOUT = 0.25
RETRY_SECONDS = 2.0


class SharedPositionMetrics:
    """`callhub_route_positions_shared` (1 through PostgreSQL, 0 from the local file) and
    `callhub_route_positions_local_total` (calls decided from the file because of it)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.shared = Gauge("callhub_route_positions_shared",
                            "1 while the rotation position is shared through PostgreSQL, 0 "
                            "while routing uses the local file.", registry=r)
        self.local_choices = Counter("callhub_route_positions_local",
                                     "Routed calls whose rotation position came from the "
                                     "local file because PostgreSQL did not answer.",
                                     registry=r)


class SharedPositions:
    """Implements chooser.SharedPosition on a PostgreSQL `Database`, backed by `local`."""

    def __init__(self, db: Database, local: RotationState, *,
                 metrics: SharedPositionMetrics | None = None, timeout: float = TIMEOUT,
                 retry_seconds: float = RETRY_SECONDS,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.local = local
        self.metrics = metrics or SharedPositionMetrics()
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.up = False  # until the first reconcile succeeds
        self._wake = asyncio.Event()
        self._shared = asyncio.Event()
        self.metrics.shared.set(0)

    async def advance(self, line: Line, eligible: Sequence[DutySlot]) -> DutySlot | None:
        if not self.up:
            self.metrics.local_choices.inc()
            return None
        now = self.clock()
        try:
            async with asyncio.timeout(self.timeout):
                async with self.db.engine.connect() as conn:
                    try:
                        agent, position = await rotation.advance(
                            conn, line.name, [(s.agent.id, s.position) for s in eligible],
                            line.rotation, now)
                    except BaseException:
                        await conn.invalidate()  # never back to the pool half-used
                        raise
        except Exception as exc:  # down, cut, timed out, or refused: the file answers
            # The pool's other connections went with this one: dropped, not handed out.
            await self.db.engine.dispose(close=False)
            self._down(exc)
            self.metrics.local_choices.inc()
            return None
        self.local.set(line.name, agent, position, at=now.timestamp())
        for slot in eligible:
            if slot.agent.id == agent and slot.position == position:
                return slot
        return None  # cannot happen: the database picks one of `eligible`

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self._shared.clear()
            self.metrics.shared.set(0)
            detail = (str(exc).splitlines() or [""])[0][:200]
            log.warning("routing.positions_local", error=type(exc).__name__, detail=detail,
                        hint="PostgreSQL did not answer: the rotation position comes from "
                             "the local file until it does")
            self._wake.set()

    async def reconcile(self) -> None:
        """Store the file's newer positions, then copy every row into the file."""
        async with asyncio.timeout(max(self.timeout, 5.0)):
            async with self.db.begin() as conn:
                local = [rotation.StoredPosition(line, p.agent, p.index,
                                                 datetime.fromtimestamp(p.at, UTC))
                         for line, p in self.local.items()]
                pushed = await rotation.push_newer(conn, local)
                rows = await rotation.read_positions(conn)
        for row in rows:
            self.local.set(row.line, row.agent, row.position, at=row.moved_at.timestamp())
        self.local.flush()
        if not self.up:  # the database answers: its pool's connections opened now, not by
            # the first calls of a burst (tens of milliseconds each)
            await self.db.open_pool("routing")
        was_up, self.up = self.up, True
        self._shared.set()
        self.metrics.shared.set(1)
        if not was_up:
            log.info("routing.positions_shared", lines=len(rows), pushed=pushed)

    async def wait_shared(self) -> None:
        """Until the position is shared (the first reconcile, or the next after an outage)."""
        await self._shared.wait()

    async def run(self) -> None:
        """Reconcile at start and after every outage; retry every `retry_seconds`."""
        while True:
            if not self.up:
                try:
                    await self.reconcile()
                except Exception as exc:
                    await self.db.engine.dispose(close=False)  # no dead connection kept
                    log.debug("routing.positions_retry", error=str(exc) or type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_seconds)
