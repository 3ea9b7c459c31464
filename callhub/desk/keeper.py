"""The follow-up keeper: one background task that keeps follow-ups current.

Each tick, in one transaction: the category rules are applied to calls that
got (or lost) a rule category, open follow-ups reached by an answered
outbound call at or after their due time are closed, and the
`callhub_followups_overdue` gauge is set. It ticks every `interval` seconds
and at once when the writer stored calls (`wake`). The clock is injected.
The loop is a supervised task (part `keeper`), down with the reason while
ticks fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from prometheus_client import CollectorRegistry, Gauge

from callhub.config import Settings
from callhub.lifecycle import Retries, Supervisor, Task, wait_set
from callhub.store import followups
from callhub.store.db import Database

log = structlog.get_logger(__name__)


def overdue_gauge(registry: CollectorRegistry | None) -> Gauge:
    """`callhub_followups_overdue` on `registry` (no labels: a count, no personal data)."""
    return Gauge("callhub_followups_overdue",
                 "Open follow-up calls more than [followups] overdue_after past their due "
                 "time.", registry=registry)


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick did."""

    created: int
    closed: list[followups.Closed]
    overdue: int


class FollowupKeeper:
    """Runs `tick` periodically and on `wake`; `start`/`stop` own the task."""

    def __init__(self, db: Database, settings: Settings, *,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time, interval: float = 5.0,
                 supervisor: Supervisor | None = None) -> None:
        self.db = db
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.health = self.supervisor.part("keeper")
        self.retries = Retries(self.health)
        self.settings = settings
        self.clock = clock
        self.interval = interval
        self.gauge = overdue_gauge(registry) if registry is not None else None
        self.ticks = 0
        self.errors = 0
        self._wake = asyncio.Event()
        self._ticked = asyncio.Event()
        self._task: Task | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    async def tick(self) -> Tick:
        """Apply rules, close reached follow-ups, count the overdue ones."""
        now = self.now()
        async with self.db.begin() as conn:
            created = await followups.sync_rules(conn, self.settings, now=now)
            closed = await followups.close_by_callbacks(conn)
            overdue = await followups.count_overdue(conn, now,
                                                    self.settings.followup_overdue_seconds)
        if self.gauge is not None:
            self.gauge.set(overdue)
        if created or closed:
            log.info("followups.updated", created=created, closed=len(closed),
                     overdue=overdue)
        return Tick(created, closed, overdue)

    def wake(self) -> None:
        """Tick soon (the writer stored calls)."""
        self._wake.set()

    async def wait_ticks(self, count: int) -> None:
        """Wait until the task has completed `count` ticks (wrap in asyncio.timeout)."""
        while self.ticks < count:
            self._ticked.clear()
            await self._ticked.wait()

    async def start(self) -> None:
        """Run the loop as the supervised task `keeper`."""
        if self._task is None:
            self._task = self.supervisor.spawn("keeper", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            await task.stop()

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # a wake during the tick below makes the next one come at once
            try:
                await self.tick()
            except Exception as exc:  # the database may be down: try again next tick
                self.errors += 1
                error = type(exc).__name__
                news = self.retries.failed(error, f"tick failed ({error}); retrying")
                say = log.warning if news else log.debug
                say("followups.tick_failed", error=error, tries=self.retries.tries,
                    detail=str(exc).splitlines()[0] if str(exc) else "")
            else:
                if tries := self.retries.succeeded():
                    log.info("followups.tick_back", tries=tries)
            self.ticks += 1
            self._ticked.set()
            await wait_set(self._wake, self.interval)
