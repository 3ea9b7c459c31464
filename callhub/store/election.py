"""Which instance of a hot-standby pair writes each PBX's calls: a PostgreSQL advisory lock.

Two `callhub run` processes with the same configuration and database both
correlate every PBX. For each PBX, the one holding the session advisory lock
`(NAMESPACE, lock_key(schema, pbx))` is the writer; the other is the standby.
The locks are taken on one dedicated connection (autocommit), so they last
exactly as long as that database session:

- SIGKILL or a crash closes the socket; the server ends the session at once
  and the standby, which tries the lock every `interval` seconds, takes over.
- A network cut or a frozen process leaves a half-open session. The holder
  runs a heartbeat every `interval` seconds and sets `idle_session_timeout`
  to `silence` seconds on its session, so the server itself ends a holder it
  has not heard from for `silence` seconds (plus TCP keepalives for the
  socket). The holder gives the role up as soon as a heartbeat fails or takes
  longer than `timeout`. Takeover bound: `silence + interval` (6 s by default).

The writer's store loop asks this gate (`admit`) what it may do with a batch:

- calls of a PBX it writes: store them;
- calls of a PBX it stands by for: drop them from its log once it sees them
  in `calls` (the writer committed them); keep them, and hold the rest of
  the log, while it does not. On takeover the new writer stores what it
  holds: the old writer's uncommitted tail, written again at worst, which
  the idempotent save on (pbx, linkedid) makes harmless.
- a call the standby has held for `window` seconds (5 min) without seeing
  it in `calls` (the writer never saw it: its AMI link was down) is stored
  by the standby itself, so the standby's log stays bounded: the calls of
  the last `window` seconds, plus what the writer cannot write meanwhile.

Every batch takes `fence` in its transaction: a transaction-level advisory
lock per PBX (`FENCE_NAMESPACE`) that serialises the writes of both
instances for a PBX, and, for a PBX this instance writes, a check that its
election session still holds the lock. So a writer that lost its session
cannot commit after the standby took over, and an overlap writes one call
after the other, never both at once (the worklist, follow-ups and SMS outbox
rows of a call therefore exist once).

On SQLite there is no election: one instance, the writer of every PBX.
The key includes the schema (`current_schema()`), so two deployments in one
database, or parallel tests in schemas of their own, do not share locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.lifecycle import Health, Retries, Supervisor, Task
from callhub.metrics.collectors import CallhubMetrics
from callhub.records import CallRecord
from callhub.store.chunks import chunks, in_chunk
from callhub.store.db import Database
from callhub.store.failures import sqlstate
from callhub.store.tables import calls

log = structlog.get_logger(__name__)

NAMESPACE = 0x63616C6C  # "call": the election locks (session level)
FENCE_NAMESPACE = 0x63616C6D  # the batches' locks (transaction level)
FENCE_WAIT = "5s"  # a batch waits at most this long for the other instance's batch
IDLE_SESSION_TIMEOUT_SINCE = 140000  # PostgreSQL 14
LOCK_NOT_AVAILABLE = "55P03"  # the fence's lock_timeout ran out
STOPPING = "stopping"  # the reason of roles given up because callhub stops


class NotWriter(ConnectionError):
    """This instance lost (or never held) the election for a PBX of the batch: the writer
    retries the batch like an outage, and by then `admit` treats it as the standby."""


def lock_key(scope: str, pbx: str) -> int:
    """A stable 31-bit key for `pbx` within `scope` (the schema)."""
    return zlib.crc32(f"{scope}\0{pbx}".encode()) & 0x7FFFFFFF


class Election:
    """Per PBX: writer or standby. `start()` runs the election on the supervisor (part
    `election`); every PBX also has a part `role/<pbx>` whose detail is its role."""

    def __init__(self, db: Database, pbxs: Iterable[str], *, supervisor: Supervisor,
                 metrics: CallhubMetrics | None = None, interval: float = 1.0,
                 timeout: float = 2.0, silence: float = 5.0, window: float = 300.0) -> None:
        self.db = db
        self.pbxs = list(dict.fromkeys(pbxs))
        self.supervisor = supervisor
        self.metrics = metrics
        self.interval = interval
        self.timeout = timeout
        self.silence = silence
        self.window = window
        self.elected = db.dialect == "postgresql"  # SQLite: one instance, no election
        self._writes: dict[str, bool] = dict.fromkeys(self.pbxs, not self.elected)
        self._roles: dict[str, Health] = {p: supervisor.part(f"role/{p}", ready=True,
                                                             required=False)
                                          for p in self.pbxs}
        self._keys: dict[str, int] = {}
        self._held_since: dict[tuple[str, str], float] = {}  # standby: first seen uncommitted
        self._scope: str | None = None  # current_schema() of the election session
        self._pid: int | None = None
        self._warned_version = False
        self._changed = asyncio.Event()
        self._task: Task | None = None
        self._decided = False  # a session has tried the locks: the roles are known
        for pbx in self.pbxs:
            self._show(pbx)

    # -- roles -------------------------------------------------------------------------

    def is_writer(self, pbx: str) -> bool:
        """Whether this instance stores `pbx`'s calls now (a PBX not configured: it does)."""
        return self._writes.get(pbx, not self.elected)

    @property
    def holding(self) -> int:
        """Calls this standby holds: seen finished, not yet seen committed by the writer."""
        return len(self._held_since)

    @property
    def roles(self) -> dict[str, str]:
        return {p: "writer" if w else "standby" for p, w in self._writes.items()}

    async def changed(self) -> None:
        """Until some role changes."""
        await self._changed.wait()

    def _show(self, pbx: str) -> None:
        writes = self._writes[pbx]
        role = "writer" if writes else "standby"
        if not self.elected:
            role += " (single instance)"
        elif not writes and not self._decided:  # no session yet (nor the database, maybe)
            role += " (not elected yet)"
        self._roles[pbx].detail = role
        if self.metrics is not None:
            self.metrics.writer.labels(pbx).set(1 if writes else 0)

    def _set(self, pbx: str, writes: bool, why: str) -> None:
        if self._writes[pbx] == writes:
            return
        self._writes[pbx] = writes
        self._show(pbx)
        # A role changing is a takeover an operator should see; giving it up to stop is not.
        say = log.info if why == STOPPING else log.warning
        say("election.writer" if writes else "election.standby", pbx=pbx, reason=why)
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the election task -------------------------------------------------------------

    async def start(self) -> None:
        if not self.elected:
            log.info("election.single_instance", pbxs=self.pbxs)
            return
        for pbx in self.pbxs:
            log.info("election.standby", pbx=pbx, reason="starting")
        # Not required: an instance without its election session is a standby, and ready.
        self._task = self.supervisor.spawn("election", self._run, required=False,
                                           ready_on_start=False)

    async def stop(self) -> None:
        """Give up every role (closing the session releases the locks)."""
        if self._task is not None:
            task, self._task = self._task, None
            await task.stop()
        if self.elected:
            self._give_up(STOPPING)

    async def _run(self) -> None:
        retries = Retries(self.supervisor.parts["election"])
        while True:
            try:
                await self._session(retries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = type(exc).__name__
                news = retries.failed(error, f"election session lost ({error}); reconnecting")
                say = log.warning if news else log.debug
                say("election.session_lost", error=error, tries=retries.tries)
            await asyncio.sleep(self.interval)

    def _lost(self, exc: BaseException) -> None:
        """Give every role up at once (before closing the session, which may hang)."""
        self._give_up(f"election session lost ({type(exc).__name__})")

    def _give_up(self, why: str) -> None:
        self._pid = None
        for pbx in self.pbxs:
            self._set(pbx, False, why)

    async def _session(self, retries: Retries) -> None:
        """One database session: take the free locks and heartbeat every `interval`."""
        async with asyncio.timeout(self.timeout * 2):
            conn = await self.db.engine.connect()
        try:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with asyncio.timeout(self.timeout):
                await self._configure(conn)
            while True:
                started = time.monotonic()
                await self._bounded(self._tick(conn))
                # Ready after the first tick: the roles are known.
                if not self._decided:
                    self._decided = True
                    for pbx in self.pbxs:
                        self._show(pbx)
                if tries := retries.succeeded():
                    log.info("election.session_back", tries=tries)
                await asyncio.sleep(max(self.interval - (time.monotonic() - started), 0.0))
        except asyncio.CancelledError:  # the task stopped: callhub is stopping
            self._give_up(STOPPING)
            raise
        except BaseException as exc:
            self._lost(exc)
            raise
        finally:
            # Never back to the pool: the session holds the locks. A cut connection may
            # hang on close (asyncpg's cancel request): bounded, the server ends it anyway.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await conn.invalidate()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await conn.close()

    async def _bounded(self, step: Coroutine[Any, Any, None]) -> None:
        """Run `step`; past `timeout`, give the roles up at once, then cancel it (a query
        on a cut connection can take seconds to cancel)."""
        task = asyncio.ensure_future(step)
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            self._lost(TimeoutError())
            task.cancel()
            raise TimeoutError(f"no answer within {self.timeout} s")
        task.result()

    async def _configure(self, conn: AsyncConnection) -> None:
        silence_ms = str(int(self.silence * 1000))
        version = int((await conn.execute(sa.text(
            "SELECT current_setting('server_version_num')"))).scalar_one())
        if version >= IDLE_SESSION_TIMEOUT_SINCE:
            await conn.execute(sa.text("SELECT set_config('idle_session_timeout', :ms, false)"),
                               {"ms": silence_ms})
        elif not self._warned_version:
            self._warned_version = True
            log.warning("election.no_idle_session_timeout", server_version=version,
                        hint="PostgreSQL before 14 cannot end a silent lock holder itself: a "
                             "writer cut off half-open is replaced when TCP keepalives give "
                             "up (about 4 s more), not within the 6 s bound")
        await conn.execute(sa.text(
            "SELECT set_config('idle_in_transaction_session_timeout', :ms, false), "
            "set_config('statement_timeout', :ms, false), "
            "set_config('tcp_keepalives_idle', '1', false), "
            "set_config('tcp_keepalives_interval', '1', false), "
            "set_config('tcp_keepalives_count', '3', false)"), {"ms": silence_ms})
        row = (await conn.execute(sa.text("SELECT pg_backend_pid(), current_schema()"))).one()
        self._pid, self._scope = int(row[0]), str(row[1])
        self._keys = {p: lock_key(self._scope, p) for p in self.pbxs}

    async def _tick(self, conn: AsyncConnection) -> None:
        """Try the locks not held; the query is also the holder's heartbeat."""
        free = [p for p in self.pbxs if not self._writes[p]]
        if not free:
            await conn.execute(sa.text("SELECT 1"))
            return
        values = ", ".join(f"({self._keys[p]})" for p in free)
        rows = await conn.execute(sa.text(
            f"SELECT k, pg_try_advisory_lock({NAMESPACE}, k) FROM (VALUES {values}) AS t(k)"))
        won = {int(k) for k, got in rows if got}
        for pbx in free:
            if self._keys[pbx] in won:
                self._set(pbx, True, "lock acquired")

    # -- the writer's gate -------------------------------------------------------------

    async def admit(self, records: Sequence[CallRecord]) -> tuple[int, list[CallRecord]]:
        """How many leading `records` the writer may settle now, and which of them it
        stores (the others are committed already). 0: wait for `changed` or a while."""
        held = [(r.pbx, r.linkedid) for r in records if not self.is_writer(r.pbx)]
        committed = await self._committed(held) if held else set()
        now = time.monotonic()
        for key in held:
            if key in committed:
                self._held_since.pop(key, None)
            else:
                self._held_since.setdefault(key, now)
        write: list[CallRecord] = []
        for n, record in enumerate(records):
            key = (record.pbx, record.linkedid)
            if self.is_writer(record.pbx):
                write.append(record)
            elif key in committed:
                continue
            elif now - self._held_since[key] >= self.window:
                log.warning("election.standby_stores", pbx=record.pbx, window=self.window,
                            hint="the writer has not stored this call: its AMI link missed it")
                write.append(record)
            else:
                return n, write
            self._held_since.pop(key, None)
        return len(records), write

    async def _committed(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        by_pbx: dict[str, list[str]] = {}
        for pbx, linkedid in keys:
            by_pbx.setdefault(pbx, []).append(linkedid)
        async with self.db.connection() as conn:
            for pbx, ids in by_pbx.items():
                for part in chunks(ids, in_chunk(conn)):
                    rows = await conn.execute(sa.select(calls.c.linkedid).where(
                        calls.c.pbx == pbx, calls.c.linkedid.in_(part)))
                    found |= {(pbx, linkedid) for (linkedid,) in rows}
        return found

    async def fence(self, conn: AsyncConnection, records: Sequence[CallRecord]) -> None:
        """In the batch's transaction: wait for the other instance's batch of the same
        PBXs, and check this instance still holds the lock of each PBX it writes."""
        if not self.elected:
            return
        pbxs = sorted({r.pbx for r in records})
        scope = self._scope
        if scope is None:
            scope = str((await conn.execute(sa.text("SELECT current_schema()"))).scalar())
        keys = [lock_key(scope, p) for p in pbxs]  # sorted: no deadlock between instances
        locks = ", ".join(f"pg_advisory_xact_lock({FENCE_NAMESPACE}, {key})" for key in keys)
        try:  # one round trip: the timeout first, then the locks in key order
            await conn.execute(sa.text(
                f"SELECT set_config('lock_timeout', :wait, true), {locks}"),
                {"wait": FENCE_WAIT})
        except sa.exc.DBAPIError as exc:
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise  # a dropped connection is an outage, not the other instance's doing
            raise NotWriter(f"the other instance's batch holds the fence ({exc})") from exc
        mine = [key for pbx, key in zip(pbxs, keys, strict=True) if self.is_writer(pbx)]
        if not mine:
            return
        pid = self._pid
        if pid is None:
            raise NotWriter("the election session is gone")
        held = await conn.execute(sa.text(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            f"AND classid = {NAMESPACE} AND objsubid = 2 AND pid = {pid}"))
        lost = set(mine) - {int(objid) for (objid,) in held}
        if lost:
            raise NotWriter("the election lock is no longer held")
