"""The call writer: every finished call goes to the spool (a write-ahead log) first, then
to the database, exactly once whatever fails.

`submit` never blocks the AMI reader: it puts the call in an inbox. Two loops
of the writer's task do the rest:

- the log loop appends whatever the inbox holds to the spool and fsyncs it,
  in a worker thread: one fsync for every call that finished while the
  previous fsync ran (and within `group_window` seconds, 0 by default: as with
  PostgreSQL's commit_delay, waiting for company costs each call the wait,
  and a busy site's calls group by themselves). A call is
  handed off once fsynced; from then on a crash (SIGKILL, the OOM killer, a
  power cut) cannot lose it.
- the store loop writes the logged calls in batches, in the order they
  finished, one transaction each, and after each committed batch moves the
  spool's checkpoint past it. A batch is whatever is waiting, up to
  `batch_size` calls (one at a time when calls trickle in, thousands after an
  outage: on PostgreSQL a batch of 2,000 costs about a third less CPU per call
  than one of 500, bench/README.md); the newest `max_buffer` logged calls are
  kept in memory, older ones are read back from the spool. The writer keeps
  its connection for `keep_idle` seconds after a batch, so calls that trickle
  in cost no checkout (and its ping) each; one found dead by then is replaced
  at once. After a restart the calls after the checkpoint are stored first;
  one stored just before the crash is stored again, which the upsert on
  (pbx, linkedid) and the idempotent worklist make harmless.

A batch the database refuses for an outage (see `errors.py`) is retried with
capped exponential backoff, forever. One it refuses for its data is split in
halves until the call to blame is alone; that call goes to the quarantine
table and the others are stored. When the spool cannot be written (disk
full, directory gone) the writer says so (log, `callhub_spool_errors_total`,
`callhub_spool_writable`, `health()`), keeps the calls in memory, stores them
straight from there and retries the spool; past `max_memory` unlogged calls it
drops new ones, each with an error log and `callhub_calls_dropped_total`.
`stop()` logs everything still in memory, then keeps storing for
`stop_timeout` seconds; what is left waits in the spool for the next start.

With a `gate` (a hot-standby pair), each batch is first shown to it: calls of
a PBX this instance stands by for are not stored but dropped from the spool
once the writer committed them, and the log waits for them until then.

Each batch's statements run on an event loop of the writer's own, in a thread, on
an engine of its own (callhub.store.db_loop): on the daemon's loop every answer
from the database waited behind a turn of all the PBXs' events.

The background task is supervised (part `writer`, restarted with backoff if
it dies, e.g. on an OSError reading the spool back); the part is down, with
the reason, while batches fail, and up again after the next stored batch.
While up, its check still says not ready when the spool cannot be written,
calls were quarantined lately, or calls were dropped (`status()`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.config import Settings
from callhub.lifecycle import Retries, Supervisor, Task, wait_first, wait_set
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord, bounded
from callhub.store import quarantine
from callhub.store.db import Database
from callhub.store.db_loop import DbLoop
from callhub.store.failures import Kind, classify, describe, sqlstate
from callhub.store.save import AgentNames, Saved, save_calls
from callhub.store.sms_queue import ContactLookup
from callhub.store.spool import Lines, Position, Spool

log = structlog.get_logger(__name__)

StoredListener = Callable[[Sequence[CallRecord], Saved], None]
SUSPECT_TRIES = 3  # a lone call failing with an unclassified error while the database answers
PING_TIMEOUT = 5.0
BATCH_TIMEOUT = 30.0  # a batch of 2,000 takes ~0.1 s; one with no answer by then never gets one
STOP_GRACE = 1.0  # past `stop_timeout`, for the batch in flight before the task is cancelled
KEEP_IDLE = 5.0  # seconds the writer keeps its connection after its last batch
ENCODE_SLICE = 250  # calls encoded for the spool between two turns of the event loop


class WriteGate(Protocol):
    """Who may write which PBX's calls (callhub.store.election, a hot-standby pair)."""

    async def admit(self, records: Sequence[CallRecord]) -> tuple[int, list[CallRecord]]:
        """(how many leading records to settle now, those of them to store); the others
        are stored already. 0: nothing yet, ask again after `changed` or `gate_poll`."""
        ...

    async def fence(self, conn: AsyncConnection, records: Sequence[CallRecord]) -> None:
        """Run first in each batch's transaction; raises (an outage) if it may not write."""
        ...

    async def changed(self) -> None:
        """Until the answer of `admit` may have changed."""
        ...


async def _encoded(records: list[CallRecord]) -> Lines:
    """The spool's lines of `records`, encoded on the event loop a slice at a time.

    In the spool's worker thread the encoding held the GIL for up to a switch
    interval (5 ms) each time the store loop got an answer from the database:
    a first batch of 2,000 calls waited ~60 ms in all. Here it runs while the
    store loop waits, ENCODE_SLICE calls (under a millisecond) between yields."""
    lines = Lines()
    for start in range(0, len(records), ENCODE_SLICE):
        if start:
            await asyncio.sleep(0)
        lines.add(records[start:start + ENCODE_SLICE])
    return lines


class _Outage(Exception):
    """The database is unreachable: keep the batch, retry later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """What /readyz needs to know about the writer (`CallWriter.status()`)."""

    pending: int
    database_failing_seconds: float  # 0 while writes succeed
    stuck: bool  # calls wait and the database has failed for longer than `stuck_after`
    spool_writable: bool
    spool_error: str | None
    quarantined: int  # by this process
    quarantine_grew: bool  # within the last `quarantine_window` seconds
    dropped: int

    def reasons(self) -> list[str]:
        """Why the writer is not healthy; empty when it is."""
        out = []
        if self.stuck:
            out.append(f"writer stuck: {self.pending} calls waiting, database failing for "
                       f"{self.database_failing_seconds:.0f} s")
        if not self.spool_writable:
            out.append(f"spool not writable: {self.spool_error}")
        if self.quarantine_grew:
            out.append("calls were quarantined recently (callhub db quarantine)")
        if self.dropped:
            out.append(f"{self.dropped} calls dropped (spool and database both failing)")
        return out


class CallWriter:
    """Owns the inbox, the spool and the task that logs and stores calls."""

    def __init__(self, db: Database, settings: Settings, *,
                 metrics: CallhubMetrics | None = None, spool: Spool | None = None,
                 batch_size: int = 2000, max_buffer: int = 10_000,
                 retry_initial: float = 0.25, retry_max: float = 15.0,
                 stop_timeout: float = 10.0, batch_timeout: float = BATCH_TIMEOUT,
                 group_window: float = 0.0,
                 keep_idle: float = KEEP_IDLE, spool_retry: float = 1.0, max_memory: int = 100_000,
                 stuck_after: float = 60.0, quarantine_window: float = 300.0,
                 supervisor: Supervisor | None = None, gate: WriteGate | None = None,
                 gate_poll: float = 1.0, held: bool = False) -> None:
        self.db = db
        # held: calls are taken and spooled, but not stored until `open()` (the daemon
        # hears AMI while it waits for the database and migrates it).
        self._open = asyncio.Event()
        if not held:
            self._open.set()
        self.gate = gate
        self.gate_poll = gate_poll
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.health = self.supervisor.part("writer", check=self._readiness)
        self.settings = settings
        self.metrics = metrics
        self.spool = spool if spool is not None else Spool(settings.spool_dir)
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.stop_timeout = stop_timeout
        self.batch_timeout = batch_timeout
        self.group_window = group_window
        self.keep_idle = keep_idle
        self.spool_retry = spool_retry
        self.max_memory = max_memory
        self.stuck_after = stuck_after
        self.quarantine_window = quarantine_window
        self.written = 0
        self.failed_batches = 0
        self._retries = Retries()  # the writer's own health says why, with the calls pending
        self._backoff = retry_initial  # the wait after the next failed try
        self.quarantined = 0
        self.dropped = 0
        self.listeners: list[StoredListener] = []
        self._inbox: deque[CallRecord] = deque()  # handed over, not yet in the spool
        self._logging: list[CallRecord] = []  # being appended right now
        self._direct: list[CallRecord] = []  # taken from the inbox while the spool fails
        # The newest logged calls not yet stored, with their end positions; the first
        # one starts at `_cache_from`. Older logged calls are read back from the spool.
        # (Two deques, not one of pairs: a pair a call, alive until stored, was most of
        # what a backlog promoted to the collector's oldest generation.)
        self._cache: deque[CallRecord] = deque()
        self._cache_ends: deque[Position] = deque()
        self._stored: Position = self.spool.checkpoint  # all before it is stored
        self._logged: Position = self.spool.end  # all before it is in the spool
        self._cache_from: Position = self._logged
        self._unstored_logged = self.spool.count() if self._logged > self._stored else 0
        self._recovered = self._unstored_logged
        self._spool_error: str | None = None
        self._failing_since: float | None = None
        self._last_quarantine: float | None = None
        self._suspects: dict[tuple[str, str], int] = {}
        self._wake = asyncio.Event()  # the store loop: something to store
        self._log_wake = asyncio.Event()  # the log loop: something to append
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._stored_all = asyncio.Event()  # the store loop has ended
        self._task: Task | None = None
        self._closed = False
        # The batches' statements run on a loop of their own, on an engine of their own
        # (`writes`, callhub.store.db_loop); `_conn` is that loop's.
        self._db_loop = DbLoop("callhub-writer-db")
        self.writes = db.connect_again(pool_size=1, max_overflow=1)
        self._conn: AsyncConnection | None = None
        self._agents: AgentNames = {}  # agent devices this writer stored, with their names
        # interface -> (name, mobile) for the SMS after the call; the daemon sets it from
        # the rota (the store knows nothing of routing).
        self.contacts: ContactLookup | None = None
        self._update_gauge()

    # -- the public surface --------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Calls handed over but not yet in the database (memory and spool)."""
        return (len(self._inbox) + len(self._logging) + len(self._direct)
                + self._unstored_logged)

    def unspooled_since(self, pbx: str) -> float | None:
        """The end (PBX time) of the earliest call of `pbx` taken and not yet in the spool
        nor the database, which a crash now would lose; None when there is none.

        For the AMI state file (callhub.ami.gap): it never says the stream was seen past
        such a call's end, so the gap a crash leaves reaches back to the call and CEL
        recovery rebuilds it (the few milliseconds before a group's fsync)."""
        return min((r.ended_at for part in (self._logging, self._direct, self._inbox)
                    for r in part if r.pbx == pbx), default=None)

    def submit(self, record: CallRecord) -> None:
        """Take one finished call; returns at once (the spool is written by the task)."""
        record = bounded(record)
        if self._closed:
            self._append_now(record)
            return
        if len(self._inbox) >= self.max_memory:
            self._drop(record)
            return
        self._inbox.append(record)
        self._update_gauge()
        self._log_wake.set()

    async def start(self) -> None:
        """Start the background task; calls left in the spool by an earlier run come first."""
        if self._task is None:
            if self._recovered:
                log.warning("writer.spool_recovered", calls=self._recovered,
                            spool=str(self.spool.directory))
            self._task = self.supervisor.spawn("writer", self._run)

    def open(self) -> None:
        """A held writer starts storing (the database is reachable and migrated)."""
        self._open.set()

    async def stop(self) -> None:
        """Log everything, store what it can within `stop_timeout`, end the task."""
        self._stopping.set()
        self._wake.set()
        self._log_wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            task.finish()  # no restart from here on: what is left stays in the spool
            try:
                # Bounded: a batch in flight on a database that hangs would otherwise
                # hold the stop for its whole `batch_timeout`. Not on SQLite: a locked
                # file answers within its busy timeout, and a batch cut off there left
                # aiosqlite's thread answering a loop already closed.
                cut = None if self.db.dialect == "sqlite" else self.stop_timeout + STOP_GRACE
                await wait_first(task.wait(), seconds=cut)
                if not task.done:
                    log.warning("writer.stop_cut", pending=self.pending, waited=cut)
            finally:
                await task.stop()
        self._closed = True
        await self._db_loop.settle()  # a batch given up on (the task cancelled) ends first
        await self._release()
        if self._db_loop.running:
            await self._db_loop.run(self.writes.engine.dispose())
            await self._db_loop.close()
        if self.pending == 0:
            self.spool.clear()
        else:
            log.warning("writer.calls_left_in_spool", calls=self.pending,
                        spool=str(self.spool.directory))
        self.spool.close()
        self._update_gauge()

    async def wait_until(self, predicate: Callable[[CallWriter], bool]) -> None:
        """Wait until `predicate(self)` holds, checked after every batch and every append
        (wrap in a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_written(self) -> None:
        """Wait until nothing is pending (wrap in asyncio.timeout)."""
        await self.wait_until(lambda w: w.pending == 0)

    def status(self) -> WriterStatus:
        """Stuck, spool writable, quarantine grown: the writer's part of /readyz."""
        now = time.monotonic()
        failing = now - self._failing_since if self._failing_since is not None else 0.0
        grew = (self._last_quarantine is not None
                and now - self._last_quarantine < self.quarantine_window)
        return WriterStatus(
            pending=self.pending, database_failing_seconds=failing,
            stuck=(self.pending > 0 and failing > self.stuck_after)
            or (self._task is not None and self._task.done),
            spool_writable=self._spool_error is None, spool_error=self._spool_error,
            quarantined=self.quarantined, quarantine_grew=grew, dropped=self.dropped)

    async def _readiness(self) -> str | None:
        """The writer part's check (while its task runs and batches succeed)."""
        reasons = self.status().reasons()
        return "; ".join(reasons) if reasons else None

    # -- book-keeping ----------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _update_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.db_buffered_calls.set(self.pending)

    def _drop(self, record: CallRecord) -> None:
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.calls_dropped.inc()
        log.error("writer.call_dropped", pbx=record.pbx, linkedid=record.linkedid,
                  reason=self._spool_error or "writer stopped", in_memory=len(self._inbox))

    def _append_now(self, record: CallRecord) -> None:
        """After stop: straight to the spool, on the caller's thread."""
        try:
            self.spool.append([record])
        except OSError as exc:
            self._spool_failed(exc)
            self._drop(record)
            return
        self._unstored_logged += 1
        self._update_gauge()

    def _spool_failed(self, exc: OSError) -> None:
        first = self._spool_error is None
        self._spool_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        if self.metrics is not None:
            self.metrics.spool_errors.inc()
            self.metrics.spool_writable.set(0)
        if first:
            log.error("spool.write_failed", spool=str(self.spool.directory),
                      error=self._spool_error, in_memory=self.pending,
                      hint="calls are kept in memory and stored from there; free space "
                           "or fix the directory's permissions")

    def _spool_ok(self) -> None:
        if self._spool_error is not None:
            log.warning("spool.writable_again", spool=str(self.spool.directory))
            self._spool_error = None
        if self.metrics is not None:
            self.metrics.spool_writable.set(1)

    # -- the task --------------------------------------------------------------------------

    async def _run(self) -> None:
        self._stored_all.clear()  # a restart after a failure runs both loops again
        log_task = asyncio.create_task(self._log_loop(), name="callhub-writer-log")
        try:
            await self._store_loop()
        finally:
            self._put_back_direct()  # taken from memory when the task failed: not lost
            self._stored_all.set()
            self._log_wake.set()
            try:
                await log_task
            finally:
                await self._notify()

    async def _log_loop(self) -> None:
        """Append the inbox to the spool, group-committed; retry while the spool fails."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._inbox:
                if self._stored_all.is_set():
                    return
                self._log_wake.clear()
                await self._log_wake.wait()
                continue
            if (self.group_window > 0 and len(self._inbox) < self.batch_size
                    and not self._stopping.is_set()):
                await asyncio.sleep(self.group_window)  # gather what finishes meanwhile
            # At most a batch per fsync, so that storing starts while the rest is logged.
            self._logging = [self._inbox.popleft()
                             for _ in range(min(len(self._inbox), self.batch_size))]
            try:
                lines = await _encoded(self._logging)
                ends = await loop.run_in_executor(None, self.spool.append_lines, lines)
            except OSError as exc:
                self._inbox.extendleft(reversed(self._logging))
                self._logging = []
                self._spool_failed(exc)
                self._wake.set()  # the store loop takes them from memory meanwhile
                if self._stored_all.is_set():
                    self._lose_inbox()
                    return
                await wait_set(self._stored_all, self.spool_retry)
                continue
            self._spool_ok()
            start = self._logged
            self._cache.extend(self._logging)
            self._cache_ends.extend(ends)
            if len(self._cache) == len(self._logging):
                self._cache_from = start  # the cache was empty: it starts here
            while len(self._cache) > self.max_buffer:  # the oldest are read back from disk
                self._cache.popleft()
                self._cache_from = self._cache_ends.popleft()
            self._logged = ends[-1]
            self._unstored_logged += len(self._logging)
            self._logging = []
            self._wake.set()
            await self._notify()

    def _lose_inbox(self) -> None:
        """The writer ends and the spool cannot take these: say which are lost."""
        while self._inbox:
            self._drop(self._inbox.popleft())

    def _next_batch(self) -> tuple[list[CallRecord], Position | None]:
        """The oldest calls not yet stored: (records, spool position after them), or
        calls straight from memory (None) while the spool cannot be written."""
        if self._stored < self._logged:
            if self._cache and self._cache_from == self._stored:
                taken = list(islice(self._cache, self.batch_size))
                return taken, self._cache_ends[len(taken) - 1]
            records, end = self.spool.read(self._stored, self.batch_size, self._logged)
            if records or end > self._stored:
                return records, end
            # Only unreadable lines were left: nothing more is logged before `_logged`.
            return [], self._logged
        if self._spool_error is not None and self._inbox:
            self._direct = [self._inbox.popleft()
                            for _ in range(min(self.batch_size, len(self._inbox)))]
            return list(self._direct), None
        return [], None

    async def _store_loop(self) -> None:
        if not await self._opened():
            return  # stopped before the database was ready: the calls wait in the spool
        self._backoff = self.retry_initial
        deadline: float | None = None
        while True:
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + self.stop_timeout
            self._wake.clear()  # before looking, so a new call from now on wakes us
            batch, end = self._next_batch()
            if self.spool.damaged:  # kept before the checkpoint passes them
                try:
                    await self._quarantine_damaged()
                except _Outage as outage:
                    if await self._wait_out(outage, deadline):
                        return
                    continue
            if not batch and end is not None:
                self._advance(end, 0)
                continue
            if not batch:
                if self._stopping.is_set():
                    await self._release()
                    if self.pending == 0 or self._past(deadline):
                        return
                await self._notify()
                if deadline is None and self.pending == 0 and self._conn is not None:
                    await self._idle()
                elif deadline is None:  # calls still being logged: keep the connection
                    await self._wake.wait()
                else:
                    await wait_set(self._wake, max(deadline - time.monotonic(), 0.0))
                continue
            settled = len(batch)
            try:
                if self.gate is not None:
                    batch, end, settled = await self._admit(batch, end)
                if settled == 0:  # a standby's calls the writer has not committed yet
                    if self._stopping.is_set():
                        return  # they wait in the spool for the next start
                    await self._notify()
                    await self._gate_wait()
                    continue
                if batch:
                    await self._write(batch)
            except _Outage as outage:
                if await self._wait_out(outage, deadline):
                    return
                continue
            self._backoff = self.retry_initial
            if not self.health.ready:
                self.health.up()
            if self._failing_since is not None:
                log.info("writer.database_back", pending=self.pending,
                         failed_tries=self._retries.succeeded())
                self._failing_since = None
            if end is None:
                self._direct = []
            else:
                self._advance(end, settled)
            self._update_gauge()
            await self._notify()

    async def _opened(self) -> bool:
        """Until `open()` (True) or the stop (False)."""
        if not self._open.is_set():
            await wait_first(self._open.wait(), self._stopping.wait())
        return self._open.is_set()

    def _put_back_direct(self) -> None:
        """Calls taken straight from memory (the spool unwritable) and not stored go back
        to the front of the inbox, in order (none when the batch came from the spool)."""
        if self._direct:
            self._inbox.extendleft(reversed(self._direct))
            self._direct = []

    async def _wait_out(self, outage: _Outage, deadline: float | None) -> bool:
        """After a failed try: calls taken from memory go back to the inbox, the failure is
        reported, and the loop waits its backoff (less when stopping), doubled for the next
        failure up to `retry_max`. True when the stop's deadline has passed and the loop
        should end."""
        self._put_back_direct()
        backoff = self._backoff
        self._backoff = min(backoff * 2, self.retry_max)
        self._failed(outage, backoff)
        await self._notify()
        if self._past(deadline):
            return True
        wait = backoff if deadline is None else min(backoff, deadline - time.monotonic())
        if not self._stopping.is_set():
            await wait_set(self._stopping, wait)
        else:
            await asyncio.sleep(max(wait, 0.0))
        return False

    async def _admit(self, batch: list[CallRecord], end: Position | None
                     ) -> tuple[list[CallRecord], Position | None, int]:
        """Ask the gate: (the calls to store, the position after the settled ones, how many
        are settled). Raises _Outage when it cannot tell (the database is away)."""
        assert self.gate is not None
        try:
            settled, write = await self.gate.admit(batch)
        except Exception as exc:
            self._put_back_direct()
            raise _Outage(exc) from exc
        if 0 < settled < len(batch):
            if end is None:  # from memory: the rest goes back to the inbox, in order
                self._inbox.extendleft(reversed(self._direct[settled:]))
                self._direct = self._direct[:settled]
            else:
                _, end = self.spool.read(self._stored, settled, self._logged)
        elif settled == 0:
            self._put_back_direct()
        return write, end, settled

    async def _gate_wait(self) -> None:
        """Until the gate's roles change, the writer stops, or `gate_poll` seconds."""
        assert self.gate is not None
        await wait_first(self.gate.changed(), self._stopping.wait(), seconds=self.gate_poll)

    @staticmethod
    def _past(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _advance(self, end: Position, count: int) -> None:
        """Calls up to `end` are stored: forget them, move the spool's checkpoint."""
        self._stored = end
        self._unstored_logged = max(self._unstored_logged - count, 0)
        while self._cache and self._cache_ends[0] <= end:
            self._cache.popleft()
            self._cache_from = self._cache_ends.popleft()
        if not self._cache:
            self._cache_from = self._logged
        if self._stored >= self._logged:
            self._unstored_logged = 0
        try:
            self.spool.set_checkpoint(end)
        except OSError as exc:  # progress not on disk: the next start stores some again
            self._spool_failed(exc)

    def _failed(self, outage: _Outage, backoff: float) -> None:
        self.failed_batches += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if self.metrics is not None:
            self.metrics.db_write_errors.inc()
        error = type(outage.cause).__name__
        state = sqlstate(outage.cause)
        # Once per error, its repeats at debug (an hour's outage was 240 warnings):
        # callhub_db_buffered_calls and /readyz keep the count of the calls waiting.
        news = self._retries.failed(f"{error} {state}")
        (log.warning if news else log.debug)(
            "writer.batch_failed", error=error, sqlstate=state, reason=str(outage)[:200],
            pending=self.pending, retry_in=round(backoff, 2), tries=self._retries.tries)
        self.health.down(f"storing calls failed ({error}); {self.pending} pending, retrying")

    # -- one batch -----------------------------------------------------------------------

    async def _write(self, records: list[CallRecord]) -> None:
        """Store `records`; split a batch refused for its data until the call to blame is
        alone, and quarantine it. Raises _Outage (the part stored stays stored)."""
        try:
            saved = await self._store(records)
        except Exception as exc:
            kind = classify(exc)
            if kind == "unknown":
                kind = await self._judge(exc, records)
            if kind == "outage":
                raise _Outage(exc) from exc
            if len(records) == 1:
                await self._quarantine(records[0], exc)
                return
            half = len(records) // 2
            log.info("writer.batch_split", calls=len(records), error=type(exc).__name__,
                     sqlstate=sqlstate(exc))
            await self._write(records[:half])
            await self._write(records[half:])
            return
        for record in records:
            self._suspects.pop((record.pbx, record.linkedid), None)
        self.written += len(records)
        if self.metrics is not None:
            for seconds in saved.callback_seconds:
                self.metrics.observe_callback(seconds)
        for listener in self.listeners:
            try:
                listener(records, saved)
            except Exception:
                log.exception("writer.listener_failed")

    async def _judge(self, exc: BaseException, records: list[CallRecord]) -> Kind:
        """An unclassified error: an outage unless the database answers; then the data's
        fault, for a lone call only after SUSPECT_TRIES such failures."""
        try:
            await self.db.ping(within=PING_TIMEOUT)
        except Exception:
            return "outage"
        if len(records) > 1:
            return "data"
        key = (records[0].pbx, records[0].linkedid)
        self._suspects[key] = self._suspects.get(key, 0) + 1
        return "data" if self._suspects[key] >= SUSPECT_TRIES else "outage"

    async def _quarantine(self, record: CallRecord, exc: BaseException) -> None:
        error = describe(exc)
        try:
            async with self.db.begin() as conn:
                added = await quarantine.add(conn, record, error)
        except Exception as qexc:  # the database went away meanwhile: retry the batch
            raise _Outage(qexc) from qexc
        self._suspects.pop((record.pbx, record.linkedid), None)
        if added:
            self.quarantined += 1
            self._last_quarantine = time.monotonic()
            if self.metrics is not None:
                self.metrics.quarantined_calls.inc()
        log.error("writer.call_quarantined", pbx=record.pbx, linkedid=record.linkedid,
                  error=type(exc).__name__, sqlstate=sqlstate(exc), new=added)

    async def _quarantine_damaged(self) -> None:
        """Keep the spool lines found unreadable in the quarantine (one transaction), so
        that deleting their segment loses nothing. Raises _Outage."""
        damaged = list(self.spool.damaged)
        try:
            async with self.db.begin() as conn:
                added = [await quarantine.add_line(conn, d.line, d.error) for d in damaged]
        except Exception as exc:
            raise _Outage(exc) from exc
        del self.spool.damaged[:len(damaged)]
        new = sum(added)
        if new:
            self.quarantined += new
            self._last_quarantine = time.monotonic()
            if self.metrics is not None:
                self.metrics.quarantined_calls.inc(new)
        log.error("writer.spool_lines_quarantined", lines=len(damaged), new=new,
                  errors=sorted({d.error.split(":", 1)[0] for d in damaged}))

    async def _idle(self) -> None:
        """Wait for the next call with the connection kept for `keep_idle` seconds, then
        hand it back to the pool: a checkout costs a ping (a transaction of its own, two
        round trips) before every lone call, most of a quiet site's few milliseconds."""
        await wait_set(self._wake, self.keep_idle)
        if not self._wake.is_set():
            await self._release()
            await self._wake.wait()

    async def _store(self, batch: list[CallRecord]) -> Saved:
        """Store one batch, on the writer's own loop (callhub.store.db_loop), within
        `batch_timeout` seconds: a database that hangs (its socket open, no answer ever)
        sends no error, and the writer would wait on it for ever, storing nothing and
        counting no failure. A TimeoutError is an outage: the batch is retried."""
        return await self._db_loop.run(self._store_within(batch, self.batch_timeout))

    async def _store_within(self, batch: list[CallRecord], seconds: float) -> Saved:
        try:
            async with asyncio.timeout(seconds):
                return await self._store_there(batch)
        except TimeoutError:  # this limit's, or the driver's own for a connect (5 s)
            raise TimeoutError("no answer from the database") from None

    async def _store_there(self, batch: list[CallRecord]) -> Saved:
        """`_store_once`; once more on a new connection when the one kept from an earlier
        batch was found dead (the server restarted meanwhile), as the pool's ping would
        have found it: not an outage."""
        kept = self._conn is not None
        try:
            return await self._store_once(batch)
        except DBAPIError as exc:
            if not (kept and exc.connection_invalidated):
                raise
            log.info("writer.connection_renewed", error=type(exc.orig).__name__)
            return await self._store_once(batch)

    async def _store_once(self, batch: list[CallRecord]) -> Saved:
        """Write one batch in one transaction on the writer's connection."""
        if self._conn is None:  # checked out (and pinged) by the pool
            self._conn = await self.writes.engine.connect()
        try:
            async with self._conn.begin():
                if self.gate is not None:
                    await self.gate.fence(self._conn, batch)
                saved = await save_calls(self._conn, batch, self.settings, self._agents,
                                         self.contacts, retried=True)
        except BaseException:
            await self._release_there(broken=True)
            raise
        self._agents.update(saved.agents)
        return saved

    async def _release(self) -> None:
        """Hand the writer's connection back to its pool."""
        if self._conn is not None:
            await self._db_loop.run(self._release_there())

    async def _release_there(self, broken: bool = False) -> None:
        """`_release` on the writer's loop; `broken`: discard the connection (after a
        failure)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if broken:
                await conn.invalidate()
            await conn.close()
        except Exception as exc:  # a dead connection may fail to close; it is gone either way
            log.debug("writer.close_failed", error=type(exc).__name__)
