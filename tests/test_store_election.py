"""The hot-standby election (callhub.store.election) and the writer's gate, in process on
PostgreSQL: each instance has its own connections, through a proxy of its own, to one
schema, so a test can end one instance's sessions (a crash) or freeze them (a network
cut) and watch the other take over; an overlap at takeover stores each call, its
worklist entry and its SMS once. Also: one process per spool directory."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from metrics_fixtures import make_record
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url
from store_fixtures import DbFactory, TcpProxy, make_call, pg_url, via_proxy
from test_faults_wal import assert_worklist_counts_each_call_once, stored
from test_sms_store import CONTACTS, outbox_rows, with_sms

from callhub.config import Settings
from callhub.lifecycle import Supervisor
from callhub.metrics.collectors import CallhubMetrics
from callhub.store import election as election_module
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.election import FENCE_NAMESPACE, NAMESPACE, Election, NotWriter, lock_key
from callhub.store.failures import classify
from callhub.store.spool_lock import SpoolInUse, SpoolLock
from callhub.store.writer import CallWriter

WAIT = 20.0
PBXS = ["main", "branch"]


@dataclass
class Instance:
    """One callhub of a pair: its proxy to the shared schema, database, election."""

    proxy: TcpProxy
    db: Database
    supervisor: Supervisor
    metrics: CallhubMetrics
    election: Election

    def gauge(self, pbx: str) -> float:
        value = self.metrics.registry.get_sample_value("callhub_writer", {"pbx": pbx})
        assert value is not None
        return value


@dataclass
class Pair:
    shared: Database  # the test's own view of the schema
    schema: str
    instances: list[Instance]

    async def instance(self, *, cut: bool = False, **election_args: float) -> Instance:
        """A started instance; `cut`: its database cut off from the start (not awaited)."""
        url = make_url(pg_url())
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432, schema=self.schema)
        await proxy.start()
        if cut:
            proxy.cut()
        db = Database.connect(via_proxy(pg_url(), proxy))
        supervisor = Supervisor(backoff_base=0.02, backoff_max=0.1)
        metrics = CallhubMetrics(CollectorRegistry(), pbxs=PBXS)
        election = Election(db, PBXS, supervisor=supervisor, metrics=metrics,
                            **election_args)
        instance = Instance(proxy, db, supervisor, metrics, election)
        self.instances.append(instance)
        await election.start()
        if not cut:
            await asyncio.wait_for(supervisor.parts["election"].wait_ready(), WAIT)
        return instance


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    factory = DbFactory("postgresql", tmp_path)
    shared = await factory.create()
    await migrate.upgrade(shared)
    assert shared.schema is not None
    made = Pair(shared, shared.schema, [])
    try:
        yield made
    finally:
        for instance in made.instances:
            await instance.election.stop()
            await instance.supervisor.aclose()
            await instance.proxy.stop()
            await instance.db.close()
        await factory.cleanup()


async def until(predicate: object, within: float = WAIT) -> float:
    """Poll `predicate()` (state another task changes); the seconds it took."""
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < within, "waited in vain"
        await asyncio.sleep(0.02)  # a poll of another task's state, not a pause
    return time.monotonic() - started


def test_the_lock_key_is_stable_and_scoped() -> None:
    assert lock_key("s1", "main") == lock_key("s1", "main")
    assert lock_key("s1", "main") != lock_key("s2", "main")
    assert lock_key("s1", "main") != lock_key("s1", "branch")
    assert 0 <= lock_key("public", "x" * 300) < 2**31


async def test_sqlite_is_one_instance_writing_every_pbx(tmp_path: Path) -> None:
    db = Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")
    supervisor = Supervisor()
    metrics = CallhubMetrics(CollectorRegistry(), pbxs=PBXS)
    election = Election(db, PBXS, supervisor=supervisor, metrics=metrics)
    await election.start()
    try:
        assert not election.elected and "election" not in supervisor.tasks
        assert all(election.is_writer(p) for p in PBXS)
        state = {s.name: s for s in await supervisor.states()}
        assert state["role/main"].ready and state["role/main"].detail == "writer (single instance)"
        assert metrics.registry.get_sample_value("callhub_writer", {"pbx": "main"}) == 1
    finally:
        await election.stop()
        await db.close()


async def test_one_writer_per_pbx_and_the_standby_takes_over_when_its_session_ends(
        pair: Pair) -> None:
    a = await pair.instance()
    assert all(a.election.is_writer(p) for p in PBXS)
    b = await pair.instance()  # its first tick is done: the locks were tried
    assert not any(b.election.is_writer(p) for p in PBXS)
    assert [a.gauge(p) for p in PBXS] == [1, 1] and [b.gauge(p) for p in PBXS] == [0, 0]
    states = {s.name: s for s in await b.supervisor.states()}
    assert states["role/main"].ready and states["role/main"].detail == "standby"

    a.proxy.cut()  # the writer's session ends (as when it is SIGKILLed)
    took = await until(lambda: all(b.election.is_writer(p) for p in PBXS))
    assert took < 10.0
    assert [b.gauge(p) for p in PBXS] == [1, 1]
    await until(lambda: not any(a.election.is_writer(p) for p in PBXS))
    assert [a.gauge(p) for p in PBXS] == [0, 0]

    a.proxy.restore()  # the old writer comes back: it stays the standby
    await asyncio.wait_for(a.supervisor.parts["election"].wait_ready(), WAIT)
    assert not any(a.election.is_writer(p) for p in PBXS)
    assert all(b.election.is_writer(p) for p in PBXS)


async def test_a_stop_gives_the_roles_up_quietly_and_a_lost_session_warns(pair: Pair) -> None:
    """Every `callhub run` stop warned "election session lost (CancelledError)" per PBX, as
    if its session had died; a stop is said at info, a lost session still as a warning."""
    a = await pair.instance()
    b = await pair.instance()
    with structlog.testing.capture_logs() as logs:
        a.proxy.cut()
        await until(lambda: all(b.election.is_writer(p) for p in PBXS))
        await until(lambda: not any(a.election.is_writer(p) for p in PBXS))
    lost = [(e["event"], e["log_level"]) for e in logs if e.get("pbx") and "lost" in e["reason"]]
    assert sorted(lost) == [("election.standby", "warning")] * len(PBXS)
    assert [(e["event"], e["log_level"]) for e in logs if e.get("reason") == "lock acquired"] == [
        ("election.writer", "warning")] * len(PBXS)
    with structlog.testing.capture_logs() as logs:
        await b.election.stop()
    assert not any(b.election.is_writer(p) for p in PBXS)
    said = [(e["event"], e["pbx"], e["log_level"], e["reason"]) for e in logs
            if e["event"].startswith("election.")]
    assert sorted(said) == sorted(("election.standby", p, "info", "stopping") for p in PBXS)


async def test_a_role_is_not_yet_elected_until_a_session_has_tried_the_locks(
        pair: Pair) -> None:
    """Started while its database is cut off (it answered the daemon's start, then went),
    an instance has no role yet: /readyz said plain "standby" through the failing tries,
    as if another instance wrote."""
    a = await pair.instance(cut=True, interval=0.05)
    part = a.supervisor.parts["election"]
    await until(lambda: any(f"; {n} tries" in (part.reason or "") for n in range(3, 99)))
    details = {p: a.supervisor.parts[f"role/{p}"].detail for p in PBXS}
    assert details == dict.fromkeys(PBXS, "standby (not elected yet)")
    a.proxy.restore()
    await until(lambda: part.ready)
    assert {p: a.supervisor.parts[f"role/{p}"].detail for p in PBXS} == dict.fromkeys(
        PBXS, "writer")
    b = await pair.instance(interval=0.05)  # the locks are a's: b is elected standby
    assert {p: b.supervisor.parts[f"role/{p}"].detail for p in PBXS} == dict.fromkeys(
        PBXS, "standby")


async def test_an_outage_is_warned_of_once_and_its_end_said(pair: Pair) -> None:
    """The election retries its session every `interval` through an outage, and warned at
    each try (a warning a second); now once, again only if the error changes, and the
    session's return is said with the tries it took."""
    a = await pair.instance(interval=0.05)
    part = a.supervisor.parts["election"]

    def warned() -> list[str]:
        return [e["error"] for e in logs
                if e["event"] == "election.session_lost" and e["log_level"] == "warning"]

    with structlog.testing.capture_logs() as logs:
        a.proxy.cut()
        await until(lambda: not part.ready and "5 tries" in (part.reason or ""))
        refused = len(warned())  # the session cut, then each connection refused
        a.proxy.refuse_logins()  # another error: said again
        await until(lambda: len(warned()) == refused + 1)
        a.proxy.restore()
        await until(lambda: part.ready)
    said = warned()
    assert 2 <= refused < 5 and all(x != y for x, y in itertools.pairwise(said))
    back, = [e for e in logs if e["event"] == "election.session_back"]
    assert back["log_level"] == "info" and back["tries"] >= 6
    assert all(a.election.is_writer(p) for p in PBXS)


async def test_a_writer_cut_off_by_the_network_is_replaced_within_the_bound(
        pair: Pair) -> None:
    a = await pair.instance()
    b = await pair.instance()
    assert a.election.is_writer("main") and not b.election.is_writer("main")
    a.proxy.freeze()  # half-open: no packet passes, no socket is closed
    cut = time.monotonic()
    await until(lambda: not a.election.is_writer("main"))  # the heartbeat timed out
    assert time.monotonic() - cut < a.election.timeout + a.election.interval + 1.0
    took = await until(lambda: all(b.election.is_writer(p) for p in PBXS))
    assert took < 10.0  # the server ended the silent session (idle_session_timeout)


async def test_the_standby_drops_what_the_writer_committed_and_stores_the_rest_once(
        pair: Pair, tmp_path: Path) -> None:
    settings = with_sms(replace(Settings(), spool_dir=str(tmp_path / "unused")))
    a = await pair.instance()
    b = await pair.instance()

    def writer(instance: Instance, name: str, poll: float) -> CallWriter:
        w = CallWriter(instance.db, replace(settings, spool_dir=str(tmp_path / name)),
                       supervisor=instance.supervisor, gate=instance.election,
                       gate_poll=poll)
        w.contacts = CONTACTS.get
        return w

    # The standby looks for committed calls every 0.1 s here; its twin below never does
    # before the takeover, so that it stores again what the writer had committed.
    wa, wb = writer(a, "a", 0.1), writer(b, "b", 0.1)
    await wa.start()
    await wb.start()
    at = time.time()
    first = [make_call(f"first.{n}", at=at, pbx=PBXS[n % 2],
                       outcome="missed" if n % 3 else "answered",
                       caller_number=f"+86139000000{n:02d}", line="front-desk")
             for n in range(12)]
    try:
        for record in first:
            wa.submit(record)
            wb.submit(record)
        await asyncio.wait_for(wa.wait_written(), WAIT)
        await asyncio.wait_for(wb.wait_written(), WAIT)  # it saw them all committed
        assert wa.written == len(first) and wb.written == 0
    finally:
        await wb.stop()
    assert not list((tmp_path / "b").glob("wal-*.jsonl"))  # its log is pruned

    # Its twin (same instance, slow to prune) holds the next calls when the writer dies.
    wb = writer(b, "b", 3600.0)
    await wb.start()
    second = [make_call(f"second.{n}", at=at, pbx=PBXS[n % 2],
                        outcome="missed" if n % 2 else "answered",
                        caller_number=f"+86139000001{n:02d}", line="front-desk")
              for n in range(10)]
    try:
        # The standby holds them before the writer commits them (else it drops the ones it
        # finds committed at its first look: a race a loaded machine lost once).
        for record in second:
            wb.submit(record)
        await asyncio.wait_for(wb.wait_until(
            lambda w: b.election.holding == len(second)), WAIT)
        for record in second:
            wa.submit(record)
        await asyncio.wait_for(wa.wait_written(), WAIT)
        assert wb.pending == len(second) and wb.written == 0
        await wa.stop()
        a.proxy.cut()
        await asyncio.wait_for(wb.wait_written(), WAIT)
        assert wb.written == len(second)  # the overlap: all of them again
    finally:
        await wa.stop()
        await wb.stop()
    rows = await stored(pair.shared)  # fails if a call is there twice
    assert set(rows) == {r.linkedid for r in first + second}
    await assert_worklist_counts_each_call_once(pair.shared)
    sms = await outbox_rows(pair.shared)
    assert sorted(r["linkedid"] for r in sms) == sorted(r.linkedid for r in first + second)
    assert len({r["idempotency_key"] for r in sms}) == len(sms)


async def test_a_writer_that_lost_its_lock_cannot_commit(pair: Pair, tmp_path: Path) -> None:
    a = await pair.instance()
    b = await pair.instance()
    async with b.db.connection() as conn:
        assert a.election.is_writer("main")
        # b is the standby: the fence lets it through only for calls it stores itself
        # (none of "main" here); a, believing itself the writer, is checked.
        async with conn.begin():
            await b.election.fence(conn, [make_call("x.1", pbx="main")])
    async with a.db.connection() as conn, conn.begin():
        await a.election.fence(conn, [make_call("x.2", pbx="main")])
    # Its lock gone behind its back (another session ended it), a still believes; the
    # fence in its next batch refuses.
    async with pair.shared.connection() as conn:
        pid = await conn.scalar(sa.text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            f"AND classid = {NAMESPACE} AND objid = {lock_key(pair.schema, 'main')}"))
        assert pid is not None
        await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    async with a.db.connection() as conn:
        with pytest.raises(ConnectionError):
            async with conn.begin():
                await a.election.fence(conn, [make_call("x.3", pbx="main")])


def test_a_spool_directory_takes_one_process(tmp_path: Path) -> None:
    first, second = SpoolLock(tmp_path / "spool"), SpoolLock(tmp_path / "spool")
    first.acquire()
    try:
        with pytest.raises(SpoolInUse, match="CALLHUB_SPOOL_DIR"):
            second.acquire()
    finally:
        first.release()
    second.acquire()  # free again once released (or its process ended)
    second.release()


def test_a_standby_exports_no_call_metrics_and_keeps_its_windows_for_the_takeover() -> None:
    clock = 1_800_000_100.0
    metrics = CallhubMetrics(CollectorRegistry(), pbxs=["main"], clock=lambda: clock)
    writer = {"main": False}
    metrics.counts = lambda pbx: writer[pbx]
    record = make_record(arrived_at=clock - 60, rings=2, pbx="main")
    metrics.observe_call(record)
    value = metrics.registry.get_sample_value
    assert value("callhub_calls_total", {"pbx": "main", "line": "other",
                                         "direction": "inbound", "outcome": "answered"}) is None
    assert value("callhub_answered_within_rings_calls", {"pbx": "main", "window": "1h"}) is None
    writer["main"] = True  # it takes over: the windows count what it saw meanwhile
    assert value("callhub_answered_within_rings_calls", {"pbx": "main", "window": "1h"}) == 1
    metrics.observe_call(record)
    assert sum(s.value for m in metrics.registry.collect() if m.name == "callhub_calls"
               for s in m.samples if s.name == "callhub_calls_total") == 1


async def test_the_fence_blames_the_other_instance_only_for_its_lock(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that waited out the other instance's fence is NotWriter; a connection cut
    under the fence was reported as that too ("the other instance's batch holds the fence
    (connection is closed)"): it is the outage it is, classified as one."""
    monkeypatch.setattr(election_module, "FENCE_WAIT", "200ms")
    a = await pair.instance()
    b = await pair.instance()
    async with b.db.connection() as b_conn, a.db.connection() as a_conn:
        await b_conn.begin()
        await b.election.fence(b_conn, [make_call("z.1", pbx="main")])
        await a_conn.begin()
        with pytest.raises(NotWriter, match="holds the fence"):
            await a.election.fence(a_conn, [make_call("z.1", pbx="main")])
        await a_conn.rollback()
        await b_conn.rollback()
    async with a.db.connection() as a_conn:
        await a_conn.begin()
        a.proxy.cut()
        with pytest.raises(Exception) as raised:
            await a.election.fence(a_conn, [make_call("z.2", pbx="main")])
        assert not isinstance(raised.value, NotWriter)
        assert classify(raised.value) == "outage"
        with contextlib.suppress(Exception):
            await a_conn.invalidate()


async def test_batches_of_one_pbx_from_both_instances_run_one_after_the_other(
        pair: Pair) -> None:
    a = await pair.instance()
    b = await pair.instance()
    key = lock_key(pair.schema, "main")
    async with b.db.connection() as b_conn, a.db.connection() as a_conn:
        await b_conn.begin()
        await b.election.fence(b_conn, [make_call("y.1", pbx="main")])  # b's batch runs

        async def a_batch() -> None:
            await a_conn.begin()
            await a.election.fence(a_conn, [make_call("y.1", pbx="main")])

        waiting = asyncio.create_task(a_batch())

        async def a_waits() -> bool:
            async with pair.shared.connection() as conn:
                return bool(await conn.scalar(sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    f"AND NOT granted AND classid = {FENCE_NAMESPACE} AND objid = {key}")))

        deadline = time.monotonic() + WAIT
        while not await a_waits():  # a's batch queues behind b's
            assert time.monotonic() < deadline and not waiting.done()
        await b_conn.commit()
        await asyncio.wait_for(waiting, WAIT)  # and runs once b's has committed
        await a_conn.rollback()
