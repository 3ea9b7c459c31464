"""The rotation position shared by a pair of instances through PostgreSQL, the file as backup.

Two `callhub run` on two hosts answer the dialplan's FastAGI (it asks the first
and, when that fails, the second). Each call moves its line's position once in
PostgreSQL (callhub.store.rotation.advance, one atomic statement), so the pair
goes round the rotation as one instance does. Every move is mirrored into the
local state file with the call's time.

Calls of a line that arrive while its statement is in flight (or waiting for a
connection) are moved together, as group commit does: one statement moves the
line k places and returns the k choices in order, what k statements in a row
would have given. The 20 calls at once of bench/route.py otherwise queued on the
row's lock, one statement after another. Only calls with the same candidates and
rotation share a statement (the usual case). A group waits for company only a
few loop turns once the statement before it is done (`GATHER_TURNS`, at most
`GATHER_SECONDS`): the calls already read by then join it.

The statement runs on connections taken from routing's pool once, when sharing starts,
and kept: taking one from SQLAlchemy's pool and giving it back cost ~50 us of CPU a
call, a fifth of a shared-mode call's in callhub (bench/route.py), and so is the asyncpg
connection under each (asking SQLAlchemy for it cost ~25 us a statement). One more
connection stays in the pool for `reconcile`.

When PostgreSQL does not answer within `timeout` (0.25 s: the dialplan is
waiting; a group's from its first call), that call (every call of its group) and
every following one are decided from the local file
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.lifecycle import cancel_and_wait, wait_set
from callhub.routing.model import Line
from callhub.routing.onduty import DutySlot
from callhub.routing.state import RotationState
from callhub.store import rotation
from callhub.store.db import Database, driver_connection

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


# A group stays open a few loop turns once the statement before it is done, so that
# calls already on their way join it: a call whose environment was read (or whose
# connection was accepted) is two or three turns from joining (the protocol's callback,
# the decision's task, its first step), and the next sessions of a burst a few more.
# bench/route.py, shared, uvloop, 4 runs each in turns: 3 turns p99 6.5-7.7 ms, 5.3-5.9k
# calls/s; 5 turns 4.6-5.8 ms; 8 turns 4.5-5.7 ms, 6.8-7.5k calls/s; none (a statement
# then moved 1.1-1.3 calls) 7.5-13.0 ms. At most GATHER_SECONDS, for a loop whose turns
# are long (a daemon busy with many PBXs' events) must not hold a call for 8 of them.
GATHER_TURNS = 8
GATHER_SECONDS = 0.0005

# A group's calls: the same line, candidates (agent id, rotation index), rotation and covers.
_Key = tuple[str, tuple[tuple[str, int], ...], tuple[str, ...], tuple[str, ...]]
# A kept connection and the asyncpg connection under it.
_Kept = tuple[AsyncConnection, Any]


@dataclass(slots=True)
class _Call:
    """One call waiting for its move: its time, whom it may be offered to, the answer."""

    at: datetime
    eligible: Sequence[DutySlot]
    answer: asyncio.Future[DutySlot | None]


@dataclass(slots=True)
class _Group:
    """Calls moved by one statement; `deadline` is the first one's timeout (loop time)."""

    key: _Key
    line: Line
    deadline: float
    calls: list[_Call] = field(default_factory=list)


async def _gather() -> None:
    """Let GATHER_TURNS loop turns pass, or fewer when they take GATHER_SECONDS."""
    loop = asyncio.get_running_loop()
    until = loop.time() + GATHER_SECONDS
    for _ in range(GATHER_TURNS):
        await asyncio.sleep(0)
        if loop.time() >= until:
            return


class SharedPositions:
    """Implements chooser.SharedPosition on a PostgreSQL `Database`, backed by `local`."""

    def __init__(self, db: Database, local: RotationState, *,
                 metrics: SharedPositionMetrics | None = None, timeout: float = TIMEOUT,
                 retry_seconds: float = RETRY_SECONDS, connections: int = 1,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.local = local
        self.connections = connections  # kept for `advance` (the pool needs one more)
        # Each kept connection with its asyncpg connection, taken once (callhub.store.
        # rotation.advance_on): asking SQLAlchemy for it cost ~25 us of CPU a statement.
        self._idle: asyncio.Queue[_Kept] = asyncio.Queue()
        self._held: set[AsyncConnection] = set()
        self._open: dict[_Key, _Group] = {}  # calls joining before their statement goes
        self._last: dict[_Key, asyncio.Task[None]] = {}  # each key's latest statement
        self._moving: set[asyncio.Task[None]] = set()  # every statement waiting or running
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
        call = _Call(self.clock(), eligible, asyncio.get_running_loop().create_future())
        self._group_for(line, eligible).calls.append(call)
        return await call.answer

    def _group_for(self, line: Line, eligible: Sequence[DutySlot]) -> _Group:
        """The open group of calls like this one (the same line, candidates and rotation),
        or a new one, whose statement follows the one in flight for them, if any."""
        key = (line.name, tuple((s.agent.id, s.position) for s in eligible), line.rotation,
               line.covers())
        group = self._open.get(key)
        if group is None:
            loop = asyncio.get_running_loop()
            group = _Group(key, line, loop.time() + self.timeout)
            self._open[key] = group
            after = self._last.get(key)
            task = loop.create_task(self._move(group, after))
            self._last[key] = task
            self._moving.add(task)
            task.add_done_callback(lambda t: self._forget(key, t))
        return group

    def _forget(self, key: _Key, task: asyncio.Task[None]) -> None:
        self._moving.discard(task)
        if self._last.get(key) is task:
            del self._last[key]

    async def _move(self, group: _Group, after: asyncio.Task[None] | None) -> None:
        """Move the line once for every call of `group`, in one statement, when the one
        before it is done; on any failure (or past the first call's timeout) every call of
        the group is decided from the file and sharing stops."""
        moves = None
        try:
            moves = await self._advance_group(group, after)
        except Exception as exc:  # down, cut, timed out, or refused: the file answers
            # The other connections went with this one: dropped, not handed out (those in
            # the pool are ended by `run` before its next reconcile).
            await self._let_go()
            self._down(exc)
        finally:  # also when cancelled (closing): no call is left waiting
            self._close(group)
            if moves is None:
                self.metrics.local_choices.inc(len(group.calls))
            for i, call in enumerate(group.calls):
                answer = None if moves is None else self._mirror(group.line, call, moves[i])
                if not call.answer.done():  # a call given up (its session gone) wants none
                    call.answer.set_result(answer)

    async def _advance_group(self, group: _Group,
                             after: asyncio.Task[None] | None) -> list[tuple[str, int]] | None:
        """The group's moves, or None when sharing stopped while it waited (the file)."""
        async with asyncio.timeout_at(group.deadline):
            if after is not None and not after.done():
                await asyncio.wait([after])  # not cancelled with this one
            await _gather()
            if not self.up:
                return None
            kept = await self._idle.get()
            self._close(group)  # the calls from now on make the next group
            _, candidates, _, covers = group.key
            conn, driver = kept
            try:
                moves = await rotation.advance_on(
                    driver, group.line.name, candidates, group.line.rotation,
                    group.calls[-1].at, places=len(group.calls), covers=covers)
            except BaseException:
                self._held.discard(conn)
                await conn.invalidate()  # never used again half-used
                raise
        await self._give_back(kept)
        return moves

    def _close(self, group: _Group) -> None:
        if self._open.get(group.key) is group:
            del self._open[group.key]

    def _mirror(self, line: Line, call: _Call, move: tuple[str, int]) -> DutySlot | None:
        """Copy a call's move into the local file (with the call's time); its slot."""
        agent, position = move
        self.local.set(line.name, agent, position, at=call.at.timestamp())
        for slot in call.eligible:
            if slot.agent.id == agent and slot.position == position:
                return slot
        return None  # cannot happen: the database picks one of `eligible`

    async def _give_back(self, kept: _Kept) -> None:
        if kept[0] in self._held:
            self._idle.put_nowait(kept)
        else:  # let go meanwhile (another call failed): to the pool, not kept
            await kept[0].close()

    async def _let_go(self, *, invalidate: bool = True) -> None:
        """Stop keeping the idle connections (those in use follow when done): invalidated
        (a dead database: no goodbye awaited) or given back to the pool."""
        self._held.clear()
        while not self._idle.empty():
            conn, _ = self._idle.get_nowait()
            await (conn.invalidate() if invalidate else conn.close())

    async def _hold(self) -> None:
        """Open `connections` connections at once and keep them (a PostgreSQL connection
        costs tens of milliseconds to open: not by the first calls of a burst). Each is
        kept as soon as it is open, so a stop meanwhile (this cancelled) gives back those
        already open (`close`); collected only at the end, they were lost with the
        cancelled gather, checked out until the garbage collector found them. Those that
        fail to open are logged and left out; calls then wait for the others."""
        await self._let_go(invalidate=False)

        async def connect() -> None:
            conn = await self.db.engine.connect()
            try:
                driver = await driver_connection(conn)
            except BaseException:
                await conn.close()
                raise
            self._held.add(conn)
            self._idle.put_nowait((conn, driver))

        opened = await asyncio.gather(*(connect() for _ in range(self.connections)),
                                      return_exceptions=True)
        failed = [c for c in opened if isinstance(c, BaseException)]
        if failed:
            log.warning("db.pool_not_opened", pool="routing", opened=len(self._held),
                        error=type(failed[0]).__name__)

    @property
    def kept(self) -> int:
        """How many connections are kept for the calls now."""
        return len(self._held)

    async def close(self) -> None:
        """Stop the statements still waiting or running (their calls are decided from the
        file) and give the kept connections back (before the engine is disposed)."""
        await cancel_and_wait(list(self._moving))
        await self._let_go(invalidate=False)

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
        if not self.up:  # the database answers: the calls' connections opened now
            await self._hold()
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
                await self.try_reconcile()
            self._wake.clear()
            await wait_set(self._wake, self.retry_seconds)

    async def try_reconcile(self) -> bool:
        """`reconcile` once, first ending the connections an outage or a failed try left
        in the pool (none handed out dead, none left open on a database that refused);
        a failure is logged at debug (`run` tries again) and returns False."""
        await self.db.drop_idle()
        try:
            await self.reconcile()
        except Exception as exc:
            log.debug("routing.positions_retry", error=str(exc) or type(exc).__name__)
            return False
        return True
