"""Calls of a line arriving together move its shared position together (issue 15, target 4):
one statement moves the line k places and returns what k statements in a row would have.

Checked against the router's own rule for the next place (what a lone instance does from
its file), written out here as the oracle, on real PostgreSQL; then two SharedPositions on
one database (a pair) under many calls at once, and a group whose statement fails or
outlasts the timeout."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncConnection

from callhub.routing import shared as shared_module
from callhub.routing.model import Agent, Line
from callhub.routing.onduty import DutySlot
from callhub.routing.shared import SharedPositionMetrics, SharedPositions
from callhub.routing.state import RotationState
from callhub.store import rotation
from callhub.store.db import Database
from callhub.store.rotation import StoredPosition, read_positions

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
POOL = ("ann", "ben", "cai", "dee", "eve", "fay")  # rota agents
SWAPS = ("sam", "tom")  # agents of no rotation (swap-ins), or a stored agent since removed


@dataclass(frozen=True)
class Case:
    rotation: tuple[str, ...]
    candidates: tuple[tuple[str, int], ...]  # sorted by (index, id), as the router passes
    stored: tuple[str, int] | None
    places: int
    covers: tuple[str, ...] = ()  # the line's swap-ins


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A rotation, the candidates of a call (rota agents at their slot or elsewhere, swap-ins
    in a slot), the row as stored (none, an agent that moved or left, an index beyond
    today's rotation) and how many calls arrive together."""
    rotation_ = tuple(draw(st.lists(st.sampled_from(POOL), max_size=6, unique=True)))
    size = max(len(rotation_), 1)
    slot = st.tuples(st.sampled_from(POOL + SWAPS), st.integers(0, size - 1))
    candidates = draw(st.lists(slot, min_size=1, max_size=7, unique=True))
    stored = draw(st.none() | st.tuples(st.sampled_from(POOL + SWAPS),
                                        st.integers(0, size + 1)))
    covers = tuple(draw(st.lists(st.sampled_from(SWAPS), unique=True)))
    return Case(rotation_, tuple(sorted(candidates, key=lambda c: (c[1], c[0]))), stored,
                draw(st.integers(1, 7)), covers)


async def set_row(db: Database, line: str, stored: tuple[str, int] | None) -> None:
    async with db.begin() as conn:
        await conn.execute(sa.text("DELETE FROM rotation_positions"))
        if stored is not None:
            await conn.execute(sa.text(
                "INSERT INTO rotation_positions (line, agent, position, moved_at) "
                "VALUES (:line, :agent, :position, :at)"),
                {"line": line, "agent": stored[0], "position": stored[1], "at": T0})


async def the_row(db: Database) -> list[StoredPosition]:
    async with db.connection() as conn:
        return await read_positions(conn)


def one_by_one(case: Case) -> list[tuple[str, int]]:
    """What `places` calls one after another get by the router's rule: the next candidate
    after the previous agent's index in the rotation, after the slot a swap-in took, or
    from the slot of an agent since removed (those after it moved up into it); no
    previous agent: the first candidate."""
    size = max(len(case.rotation), 1)
    previous, moves = case.stored, []
    for _ in range(case.places):
        if previous is None:
            previous = case.candidates[0]
        else:
            agent, index = previous
            if agent in case.rotation:
                start = case.rotation.index(agent) + 1
            else:
                start = index + (agent in case.covers)
            previous = min(case.candidates, key=lambda c: ((c[1] - start) % size, c[1], c[0]))
        moves.append(previous)
    return moves


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
async def test_k_places_at_once_are_k_single_moves(pg_db: Database, case: Case) -> None:
    at = T0 + timedelta(seconds=case.places)
    await set_row(pg_db, "hotline", case.stored)
    async with pg_db.connection() as conn:
        got = await rotation.advance(conn, "hotline", case.candidates, case.rotation,
                                     at, places=case.places, covers=case.covers)
    expected = one_by_one(case)
    assert got == expected
    assert await the_row(pg_db) == [StoredPosition("hotline", *expected[-1], at)]


async def test_the_pair_s_first_moves_of_a_line_at_once_start_once(pg_db: Database) -> None:
    """No row yet and both instances inserting it at once: the one that finds the other's
    row moves on from it, not from the first candidate again."""
    candidates = [("ann", 0), ("ben", 1), ("cai", 2)]
    rotation_ = ["ann", "ben", "cai"]
    for _ in range(5):
        await set_row(pg_db, "hotline", None)
        async with pg_db.connection() as a, pg_db.connection() as b:
            got = await asyncio.gather(
                rotation.advance(a, "hotline", candidates, rotation_, T0, places=2),
                rotation.advance(b, "hotline", candidates, rotation_, T0, places=4))
        firsts = Counter(agent for moves in got for agent, _ in moves)
        assert firsts == {"ann": 2, "ben": 2, "cai": 2}


# -- a pair of SharedPositions on one database ------------------------------------------

ROTA = ("ann", "ben", "cai", "dee")
HOTLINE = Line(name="hotline", dids=("+4930123",), rotation=ROTA, shifts=())


def slots() -> list[DutySlot]:
    return [DutySlot(Agent(id=a, name=a, interface=f"PJSIP/10{i}"), i)
            for i, a in enumerate(ROTA)]


@dataclass
class Member:
    shared: SharedPositions
    registry: CollectorRegistry
    db: Database

    def local_total(self) -> float:
        value = self.registry.get_sample_value("callhub_route_positions_local_total")
        assert value is not None
        return value


async def member(pg_db: Database, state: Path, within: float = 10.0) -> Member:
    own = pg_db.connect_again(pool_size=5, max_overflow=0, pre_ping=False,
                              session={"synchronous_commit": "off"})
    registry = CollectorRegistry()
    shared = SharedPositions(own, RotationState(state), connections=4, timeout=within,
                             metrics=SharedPositionMetrics(registry))
    await shared.reconcile()
    return Member(shared, registry, own)


@pytest.fixture
async def pair(pg_db: Database, tmp_path: Path) -> AsyncIterator[tuple[Member, Member]]:
    a = await member(pg_db, tmp_path / "a.json")
    b = await member(pg_db, tmp_path / "b.json")
    yield a, b
    for m in (a, b):
        await m.shared.close()
        await m.db.close()


async def test_a_pair_under_many_calls_at_once_goes_round_evenly(
        pair: tuple[Member, Member], pg_db: Database) -> None:
    a, b = pair
    eligible = slots()
    waves = [await asyncio.gather(*(m.shared.advance(HOTLINE, eligible)
                                    for _ in range(20) for m in (a, b)))
             for _ in range(3)]
    firsts = [slot for wave in waves for slot in wave]
    assert all(slot is not None for slot in firsts)  # every call through PostgreSQL
    assert Counter(s.agent.id for s in firsts if s) == dict.fromkeys(ROTA, 30)
    assert a.local_total() == b.local_total() == 0.0
    [row] = await the_row(pg_db)  # 120 calls from ann on: the last went to dee
    assert (row.agent, row.position) == ("dee", 3)


def count_statements(monkeypatch: pytest.MonkeyPatch,
                     noted: Callable[[int], int] = lambda places: places) -> list[int]:
    """What `noted` says of each statement as it is sent (the places it moves), in order."""
    statements: list[int] = []
    advance_on = rotation.advance_on

    async def counted(*args: object, places: int = 1, **more: object
                      ) -> list[tuple[str, int]]:
        statements.append(noted(places))
        return await advance_on(*args, places=places, **more)  # type: ignore[arg-type, misc]

    monkeypatch.setattr(rotation, "advance_on", counted)
    return statements


async def test_calls_queued_behind_a_statement_go_in_the_next_one_in_order(
        pair: tuple[Member, Member], pg_db: Database,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: the calls that arrive while a statement waits on the row's lock (here
    held by the other instance's stand-in) go together in the next statement, their
    choices in the order they arrived, round the rotation as one call after another."""
    a, _ = pair
    statements = count_statements(monkeypatch)
    async with pg_db.begin() as locker:
        await a.shared.advance(HOTLINE, slots())  # ann; the row exists
        await locker.execute(sa.text(
            "SELECT 1 FROM rotation_positions WHERE line = 'hotline' FOR UPDATE"))
        first = asyncio.create_task(a.shared.advance(HOTLINE, slots()))
        await wait_for_lock_waiter(locker)
        queued = [asyncio.create_task(a.shared.advance(HOTLINE, slots())) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not first.done()
    got = [await first] + [await call for call in queued]
    assert [s.agent.id for s in got if s] == ["ben", "cai", "dee", "ann", "ben", "cai"]
    assert statements == [1, 1, 5]
    position = a.shared.local.get("hotline")
    assert position is not None and position.agent == "cai"  # the last move, mirrored


async def test_calls_waiting_for_a_connection_go_together(
        pair: tuple[Member, Member], monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = pair
    statements = count_statements(monkeypatch)
    got = await asyncio.gather(*(a.shared.advance(HOTLINE, slots()) for _ in range(12)))
    assert [s.agent.id for s in got if s] == [ROTA[i % 4] for i in range(12)]
    assert statements == [12]


async def test_a_call_a_turn_or_two_behind_joins_the_group(
        pair: tuple[Member, Member], monkeypatch: pytest.MonkeyPatch) -> None:
    """A call whose decision starts a loop turn or two after the group's (its session's
    callback, then its task, as on a busy server) still goes in the group's statement.
    Turns alone decide here: a slow turn on a busy test machine must not end the gathering
    by its time bound (tested below)."""
    a, _ = pair
    monkeypatch.setattr(shared_module, "GATHER_SECONDS", 60.0)
    statements = count_statements(monkeypatch)

    async def behind(turns: int) -> DutySlot | None:
        for _ in range(turns):
            await asyncio.sleep(0)
        return await a.shared.advance(HOTLINE, slots())

    got = await asyncio.gather(behind(0), behind(1), behind(2))
    assert [s.agent.id for s in got if s] == ["ann", "ben", "cai"]
    assert statements == [3]


async def test_a_busy_loop_does_not_hold_a_group_for_all_its_turns(
        pair: tuple[Member, Member], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each turn of this loop takes 1 ms of other work: the group goes after the turn that
    passes GATHER_SECONDS, not after GATHER_TURNS of them."""
    a, _ = pair
    await a.shared.advance(HOTLINE, slots())  # the row exists; connections warm
    loop = asyncio.get_running_loop()
    turns = 0

    def busy() -> None:
        nonlocal turns
        turns += 1
        until = time.perf_counter() + 0.001
        while time.perf_counter() < until:  # another PBX's events, say
            pass
        handle[0] = loop.call_soon(busy)

    sent_at = count_statements(monkeypatch, noted=lambda _: turns)  # the turn it went
    handle = [loop.call_soon(busy)]
    try:
        started = turns
        await a.shared.advance(HOTLINE, slots())
    finally:
        handle[0].cancel()
    # one turn of gathering, and the few every call takes (its task, the group's, ...)
    assert sent_at and sent_at[0] - started < shared_module.GATHER_TURNS
    assert shared_module.GATHER_SECONDS < 0.001


async def test_a_lone_call_goes_at_once(pair: tuple[Member, Member]) -> None:
    a, _ = pair
    picked = [await a.shared.advance(HOTLINE, slots()) for _ in range(3)]
    assert [s.agent.id for s in picked if s] == ["ann", "ben", "cai"]


async def test_calls_of_other_candidates_go_their_own_way(
        pair: tuple[Member, Member]) -> None:
    """A call for whom `ben` is busy is not moved with those who may have ben: the two
    kinds alternate, each group in a statement of its own."""
    a, _ = pair
    everyone, without_ben = slots(), [s for s in slots() if s.agent.id != "ben"]
    got = await asyncio.gather(*(a.shared.advance(HOTLINE, everyone if i % 2 else without_ben)
                                 for i in range(12)))
    assert all(s is not None for s in got)
    assert all(s.agent.id != "ben" for s in got[0::2] if s)
    assert len({s.agent.id for s in got if s}) == 4  # ben too, to those who may have him


async def test_a_group_whose_statement_outlasts_the_timeout_goes_to_the_file(
        pg_db: Database, tmp_path: Path) -> None:
    """The row locked by another connection: the group's statement waits past the first
    call's timeout; every call of the group is decided from the file, sharing stops, and
    the calls after it do not wait again."""
    a = await member(pg_db, tmp_path / "a.json", within=0.3)
    try:
        await a.shared.advance(HOTLINE, slots())  # the row exists
        async with pg_db.begin() as locker:
            await locker.execute(sa.text(
                "SELECT 1 FROM rotation_positions WHERE line = 'hotline' FOR UPDATE"))
            started = asyncio.get_running_loop().time()
            got = await asyncio.gather(*(a.shared.advance(HOTLINE, slots())
                                         for _ in range(8)))
            waited = asyncio.get_running_loop().time() - started
            assert got == [None] * 8  # the router decides each from the file
            assert 0.3 <= waited < 1.5
            assert a.shared.up is False
            assert a.local_total() == 8.0
            assert await a.shared.advance(HOTLINE, slots()) is None  # at once, no wait
            assert a.local_total() == 9.0
    finally:
        await a.shared.close()
        await a.db.close()


async def test_a_group_cut_off_by_the_database_goes_to_the_file(
        pg_db: Database, tmp_path: Path) -> None:
    """The statements' backends terminated while a group waits on the row's lock: every call
    of the group gets the file, sharing stops; it resumes after a reconcile."""
    a = await member(pg_db, tmp_path / "a.json")
    try:
        await a.shared.advance(HOTLINE, slots())
        async with pg_db.begin() as locker:
            await locker.execute(sa.text(
                "SELECT 1 FROM rotation_positions WHERE line = 'hotline' FOR UPDATE"))
            calls = asyncio.gather(*(a.shared.advance(HOTLINE, slots()) for _ in range(6)))
            await wait_for_lock_waiter(locker)
            await locker.execute(sa.text(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {WAITING}"))
            assert await calls == [None] * 6
        assert a.shared.up is False and a.local_total() == 6.0
        await a.shared.reconcile()
        assert (await a.shared.advance(HOTLINE, slots())) is not None
    finally:
        await a.shared.close()
        await a.db.close()


async def test_a_stop_while_sharing_starts_gives_back_the_connections_opened(
        pg_db: Database, tmp_path: Path) -> None:
    """Sharing starts by opening its connections at once (`reconcile`). A stop meanwhile (the
    `route-positions` task cancelled) must leave none of those already open checked out:
    they were lost with the cancelled gather until the garbage collector found them (an
    SAWarning, seen under load in tests/test_daemon.py). Here the pool has room for one of
    the two, so the second waits for it while the first is open."""
    own = pg_db.connect_again(pool_size=1, max_overflow=0, pool_timeout=30)
    pool = own.engine.sync_engine.pool
    checkouts: list[object] = []
    first_kept = asyncio.Event()  # checkouts: the reconcile's transaction, the first kept

    def checked_out(*args: object) -> None:
        checkouts.append(args)
        if len(checkouts) == 2:
            first_kept.set()

    sa.event.listen(own.engine.sync_engine, "checkout", checked_out)
    shared = SharedPositions(own, RotationState(tmp_path / "a.json"), connections=2)
    starting = asyncio.create_task(shared.reconcile())
    try:
        async with asyncio.timeout(10):
            await first_kept.wait()
        assert pool.checkedout() == 1 and not starting.done()
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        await shared.close()  # what the routing part does after stopping the task
        assert pool.checkedout() == 0
    finally:
        await own.close()


async def test_retries_on_a_database_that_refuses_leave_no_session_open(
        pg_own_database: Database, tmp_path: Path) -> None:
    """A database that answers but refuses the reconcile (its table renamed away, as a
    newer callhub's migration might): `run` tries again every `retry_seconds`, each try
    on a connection of the pool. Each try's connection is closed before the next; dropped
    unclosed, each kept its session open on the server until the garbage collector found
    it (switched off here: callhub must close them itself), one more per retry."""
    db = pg_own_database  # its sessions are counted: a database of its own
    own = db.connect_again(pool_size=3, max_overflow=0, pre_ping=False,
                           session={"application_name": "routing-under-test"})
    shared = SharedPositions(own, RotationState(tmp_path / "a.json"), connections=2)

    async def sessions() -> int:
        async with db.connection() as conn:
            return int((await conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'routing-under-test'"))).scalar_one())

    async with db.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE rotation_positions RENAME TO rotation_away"))
    gc.disable()
    try:
        for _ in range(6):
            assert await shared.try_reconcile() is False
        assert shared.up is False
        assert await sessions() <= 1  # the last try's, ended before the next
        async with db.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE rotation_away RENAME TO rotation_positions"))
        assert await shared.try_reconcile() is True
        assert shared.up is True and shared.kept == 2
        assert await sessions() == 2  # the kept ones (the reconcile's is one of them)
    finally:
        gc.enable()
        await shared.close()
        await own.close()


# Backends (not this one) waiting on a lock while holding one on this test's table: the
# statements of the SharedPositions under test, not those of anything else on the server.
WAITING = ("wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND pid IN ("
           "SELECT pid FROM pg_locks WHERE relation = 'rotation_positions'::regclass)")


async def wait_for_lock_waiter(conn: AsyncConnection) -> None:
    """Until a statement waits on the row `conn` holds locked."""
    for _ in range(500):
        waiting = (await conn.execute(sa.text(
            f"SELECT count(*) FROM pg_stat_activity WHERE {WAITING}"))).scalar_one()
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no statement waits on the row's lock")
