"""The batched call writer: AMI ingestion hands over records, the writer makes them last.

`submit` never blocks the AMI reader: it appends to a bounded memory buffer.
A background task writes the buffer in batches, one transaction each. A
batch is whatever is pending, up to `batch_size` (500) calls: one call at a
time when calls trickle in (the lowest lag), hundreds when a backlog built
up (a burst, a database back from an outage, a spool), where a batch costs
about as many round trips as a single call (see `save.py`). While a
backlog lasts the writer keeps its database connection from one batch to
the next (no pool checkout and ping each time) and it never writes an
agent device it already stored. When
the database is unreachable the buffer fills; past `max_buffer` new calls go
to the spool file (fsynced), and while the spool holds anything every new
call goes there too, so calls are written in the order they finished (a
callback after its miss). Failed batches are retried with capped
exponential backoff; the buffer is written first, then the spool is
drained. `stop()` keeps trying for `stop_timeout` seconds, then puts
whatever is left into the spool; `start()` on the next run writes the spool
before anything new.

The background task is supervised (part `writer`, restarted with backoff
if it dies, e.g. on an OSError from the spool); the part is down, with the
reason, while batches fail, and up again after the next stored batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.config import Settings
from callhub.lifecycle import Supervisor, Task
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.store.db import Database
from callhub.store.save import AgentNames, Saved, save_calls
from callhub.store.spool import Spool

log = structlog.get_logger(__name__)

StoredListener = Callable[[Sequence[CallRecord], Saved], None]


class CallWriter:
    """Owns the buffer, the spool and the task that writes them to the database."""

    def __init__(self, db: Database, settings: Settings, *,
                 metrics: CallhubMetrics | None = None, spool: Spool | None = None,
                 batch_size: int = 500, max_buffer: int = 10_000,
                 retry_initial: float = 0.25, retry_max: float = 15.0,
                 stop_timeout: float = 10.0, supervisor: Supervisor | None = None) -> None:
        self.db = db
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.health = self.supervisor.part("writer")
        self.settings = settings
        self.metrics = metrics
        self.spool = spool if spool is not None else Spool(settings.spool_dir)
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stop_timeout = stop_timeout
        self.written = 0
        self.failed_batches = 0
        self.listeners: list[StoredListener] = []
        self._buffer: deque[CallRecord] = deque()
        self._spool_offset = 0
        self._spool_done = 0
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._task: Task | None = None
        self._closed = False
        self._conn: AsyncConnection | None = None
        self._agents: AgentNames = {}  # agent devices this writer stored, with their names
        self._update_gauge()

    @property
    def pending(self) -> int:
        """Calls handed over but not yet in the database (memory and spool)."""
        return len(self._buffer) + len(self.spool) - self._spool_done

    def submit(self, record: CallRecord) -> None:
        """Take one finished call; returns at once (an fsync only while spooling)."""
        if self._closed or len(self.spool) > 0 or len(self._buffer) >= self.max_buffer:
            self.spool.append([record])
        else:
            self._buffer.append(record)
        self._update_gauge()
        self._wake.set()

    async def start(self) -> None:
        """Start the background task; a spool left by an earlier run is written first."""
        if self._task is None:
            if len(self.spool):
                log.warning("writer.spool_found", calls=len(self.spool),
                            path=str(self.spool.path), hint="writing them first")
            self._task = self.supervisor.spawn("writer", self._run)

    async def stop(self) -> None:
        """Write what is pending (up to `stop_timeout`), spool the rest, end the task."""
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            task.finish()  # no restart from here on: what is left goes to the spool
            try:
                await task.wait()
            finally:
                await task.stop()
        self._closed = True
        self._save_leftovers()

    async def wait_until(self, predicate: Callable[[CallWriter], bool]) -> None:
        """Wait until `predicate(self)` holds, checked after every batch (wrap in a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_written(self) -> None:
        """Wait until nothing is pending (wrap in asyncio.timeout)."""
        await self.wait_until(lambda w: w.pending == 0)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _update_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.db_buffered_calls.set(self.pending)

    def _next_batch(self) -> tuple[list[CallRecord], bool, int]:
        """The oldest pending calls: (records, from_spool, spool offset after them)."""
        if self._buffer:
            return list(islice(self._buffer, self.batch_size)), False, self._spool_offset
        if len(self.spool):
            records, offset = self.spool.read(self._spool_offset, self.batch_size)
            if not records:
                # Everything in the file is stored (or a torn last line is left): done.
                self.spool.clear()
                self._spool_offset = self._spool_done = 0
                self._update_gauge()
            return records, True, offset
        return [], False, self._spool_offset

    async def _run(self) -> None:
        backoff = self.retry_initial
        deadline: float | None = None
        while True:
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + self.stop_timeout
            self._wake.clear()  # before looking, so a submit from now on wakes us
            batch, from_spool, offset = self._next_batch()
            if not batch:
                await self._release()
                if self._stopping.is_set():
                    return
                if self.pending:
                    continue  # the spool was cleared; look again
                await self._notify()
                await self._wake.wait()
                continue
            try:
                saved = await self._store(batch)
            except Exception as exc:  # any database failure: keep the calls, retry later
                self.failed_batches += 1
                if self.metrics is not None:
                    self.metrics.db_write_errors.inc()
                error = type(exc).__name__
                log.warning("writer.batch_failed", calls=len(batch), error=error,
                            detail=str(exc).splitlines()[0] if str(exc) else "",
                            pending=self.pending, retry_in=round(backoff, 3))
                self.health.down(f"storing calls failed ({error}); {self.pending} pending, "
                                 f"retrying")
                await self._notify()
                if deadline is not None and time.monotonic() >= deadline:
                    return
                wait = backoff if deadline is None else min(backoff,
                                                            deadline - time.monotonic())
                if not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), wait)
                else:
                    await asyncio.sleep(max(wait, 0.0))
                backoff = min(backoff * 2, self.retry_max)
                continue
            backoff = self.retry_initial
            if not self.health.ready:
                self.health.up()
            if from_spool:
                self._spool_offset = offset
                self._spool_done += len(batch)
            else:
                for _ in batch:
                    self._buffer.popleft()
            self.written += len(batch)
            self._update_gauge()
            await self._notify()
            if self.metrics is not None:
                for seconds in saved.callback_seconds:
                    self.metrics.observe_callback(seconds)
            for listener in self.listeners:
                try:
                    listener(batch, saved)
                except Exception:
                    log.exception("writer.listener_failed")

    async def _store(self, batch: list[CallRecord]) -> Saved:
        """Write one batch in one transaction on the writer's connection."""
        if self._conn is None:
            self._conn = await self.db.engine.connect()  # checked out (and pinged) by the pool
        try:
            async with self._conn.begin():
                saved = await save_calls(self._conn, batch, self.settings, self._agents)
        except BaseException:
            await self._release(broken=True)
            raise
        self._agents.update(saved.agents)
        return saved

    async def _release(self, broken: bool = False) -> None:
        """Hand the connection back to the pool (idle), or discard it (after a failure)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if broken:
                await conn.invalidate()
            await conn.close()
        except Exception as exc:  # a dead connection may fail to close; it is gone either way
            log.debug("writer.close_failed", error=type(exc).__name__, detail=str(exc))

    def _save_leftovers(self) -> None:
        """On stop: the unwritten buffer goes in front of the unread spool, durably."""
        if not self._buffer and not (len(self.spool) - self._spool_done):
            return
        rest: list[CallRecord] = list(self._buffer)
        offset = self._spool_offset
        while True:
            records, offset = self.spool.read(offset, 10_000)
            if not records:
                break
            rest.extend(records)
        self.spool.rewrite(rest)
        self._buffer.clear()
        self._spool_offset = self._spool_done = 0
        self._update_gauge()
        log.warning("writer.spooled_on_exit", calls=len(rest), path=str(self.spool.path),
                    hint="they will be written on the next start")
