"""The whole path: AMI simulator over TCP -> `callhub run` -> database -> API over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import structlog
from ami_fixtures import sim_pbx
from store_fixtures import T0, TOKENS, DbFactory, TcpProxy, auth, make_call, pg_url, via_proxy

from callhub.ami import native
from callhub.config import ApiToken, Settings
from callhub.daemon import Daemon, Part, StartupError, StoppedWhileStarting, running
from callhub.sim.agi_client import agi_request, asterisk_environment
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import SynthCall
from callhub.sim.demo import Demo
from callhub.store import migrate
from callhub.store.db import Database
from callhub.store.spool import Spool

WAIT = 30.0
X, Y, Z = "+8613800000004", "+8613800000005", "+8613800000006"


def desk_calls(sim: AmiSimulator) -> list[SynthCall]:
    """A miss, its answered callback, an abandon, an answered call from 张三."""
    now = time.time() - 900
    make = sim.factory.make
    return [
        make("missed", now, number=X, caller_name="李四", ring_seconds=20.0),
        make("answered", now + 10, number=Z, caller_name="张三", ring_seconds=6.0,
             talk_seconds=30.0),
        make("abandoned", now + 20, number=Y, caller_name="王芳", ring_seconds=9.0),
        make("outbound", now + 300, number=X, ring_seconds=5.0, talk_seconds=20.0),
    ]


async def get(session: aiohttp.ClientSession, url: str, role: str = "admin",
              **params: Any) -> Any:
    async with session.get(url, headers=auth(role), params=params) as response:
        assert response.status == 200, await response.text()
        if response.content_type == "application/json":
            return await response.json()
        return await response.text()


async def test_simulator_to_api(db_factory: DbFactory, ami_simulator: AmiSimulator,
                                tmp_path: Path) -> None:
    settings = replace(Settings(), pbxs=(sim_pbx(ami_simulator),),
                       api_listen=("127.0.0.1", 0), fastagi_listen=("127.0.0.1", 0),
                       spool_dir=str(tmp_path / "spool"),
                       api_tokens=tuple(ApiToken(r, t) for r, t in TOKENS.items()))
    db = await db_factory.create()  # empty: the daemon applies the migrations
    d = Daemon(settings, db=db, out=io.StringIO())
    async with running(d):
        assert await migrate.current_revision(db) == migrate.head_revision()
        ingest = d.ingests["lab"]
        await ingest.wait_connected(WAIT)
        calls = desk_calls(ami_simulator)
        await ami_simulator.play_calls(calls, speed=None)
        assert d.writer is not None
        async with asyncio.timeout(WAIT):
            await d.writer.wait_until(lambda w: w.written >= len(calls))

        async with aiohttp.ClientSession() as session:
            base = f"{d.api_url}/api/v1"
            items = (await get(session, f"{base}/calls"))["items"]
            by_id = {c["linkedid"]: c for c in items}
            assert set(by_id) == {c.linkedid for c in calls}
            for call in calls:
                got = by_id[call.linkedid]
                for key in ("direction", "outcome", "agent", "caller_number",
                            "called_number"):
                    if key in call.expected:
                        assert got[key] == call.expected[key], (call.kind, key)
            answered = next(c for c in items if c["caller_number"] == Z)
            assert answered["caller_name"] == "张三"
            detail = await get(session, f"{base}/calls/{answered['id']}")
            assert detail["attempts"] and detail["attempts"][-1]["result"] == "answered"

            worklist = (await get(session, f"{base}/worklist"))["items"]
            status = {e["number"]: (e["status"], e["how"]) for e in worklist}
            assert status == {X: ("handled", "callback"), Y: ("pending", None)}

            totals = (await get(session, f"{base}/stats", role="viewer",
                                **{"from": "2000-01-01", "to": "2000-12-31"}))["totals"]
            assert totals["inbound"] == 0  # another period: nothing
            start = time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                  time.gmtime(time.time() - 86400))
            totals = (await get(session, f"{base}/stats", role="viewer",
                                **{"from": start}))["totals"]
            assert (totals["inbound"], totals["answered"], totals["outbound"]) == (3, 1, 1)
            assert (totals["pending_callbacks"], totals["handled_callbacks"]) == (1, 1)

            ready = await get(session, f"{d.api_url}/readyz", role="viewer")
            assert ready["ready"] is True and ready["reasons"] == []
            # Every part of the daemon is listed by name, each ready.
            assert set(ready["parts"]) >= {"database", "writer", "ami/lab", "fastagi", "keeper",
                                           "worklist-gauge"}
            assert all(p["ready"] and p["reason"] is None for p in ready["parts"].values())
            metrics = await get(session, f"{d.api_url}/metrics")
            assert "callhub_calls_total" in metrics
            assert X not in metrics and "张三" not in metrics
    printed = d.out.getvalue()  # type: ignore[attr-defined]
    assert "callhub API: http://127.0.0.1:" in printed
    assert f"callhub desk: {d.api_url}/desk/" in printed


async def test_no_migrate_refuses_an_old_schema(db_factory: DbFactory, tmp_path: Path) -> None:
    settings = replace(Settings(), api_listen=("127.0.0.1", 0),
                       spool_dir=str(tmp_path / "spool"))
    db = await db_factory.create()
    with pytest.raises(StartupError, match="callhub db upgrade"):
        async with running(Daemon(settings, db=db, migrate=False)):
            pass
    await migrate.upgrade(db)
    async with running(Daemon(settings, db=db, migrate=False, out=sys.stderr)) as d:
        assert d.api_url


async def test_a_schema_a_newer_callhub_upgraded_stops_the_start_with_a_clear_error(
        db_factory: DbFactory, tmp_path: Path) -> None:
    """A downgrade (or an older process of a fleet restarted) meets a revision it does not
    know: it refuses to start, with or without migrating, and leaves the schema as is."""
    settings = replace(Settings(), api_listen=("127.0.0.1", 0),
                       spool_dir=str(tmp_path / "spool"))
    db = await db_factory.create()
    await migrate.upgrade(db)
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    for migrating in (True, False):
        with pytest.raises(StartupError, match="newer callhub upgraded it"):
            async with running(Daemon(settings, db=db, migrate=migrating)):
                pass
    assert await migrate.current_revision(db) == "0099_future"
    async with db.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = :head"),
                           {"head": migrate.head_revision()})
    async with running(Daemon(settings, db=db, migrate=True, out=sys.stderr)) as d:
        assert d.api_url


async def read_until(stream: asyncio.StreamReader, predicate: Any, lines: list[str]) -> str:
    """Read lines (kept in `lines`) until one satisfies `predicate`; return it."""
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError("stream ended; read so far:\n" + "".join(lines[-20:]))
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        if predicate(line):
            return line


@asynccontextmanager
async def callhub_run(cwd: Path, *args: str) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamReader]]:
    """`callhub run ARGS` as an admin starts it in `cwd` (its SQLite file and spool
    there), on a free API port, logging at info; stdout and stderr piped. The body has
    60 s; a process still running after it is killed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLHUB_")}
    env.update(CALLHUB_API_LISTEN="127.0.0.1:0", CALLHUB_LOG_LEVEL="info")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", "run", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            yield proc, proc.stdout, proc.stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sighup_is_logged_and_the_daemon_goes_on(tmp_path: Path) -> None:
    """`kill -HUP` (an admin's habit for a reload, or a closed terminal) killed `callhub
    run` on the spot; it is logged, the daemon serves on, and SIGTERM still stops it."""
    out: list[str] = []
    err: list[str] = []
    async with callhub_run(tmp_path) as (proc, stdout, stderr):
        url_line = await read_until(stdout, lambda s: "callhub API:" in s, out)
        base = url_line.split()[2].rstrip("/").removesuffix("/api/v1")
        for _ in range(2):
            proc.send_signal(signal.SIGHUP)
            await read_until(stderr, lambda s: "daemon.sighup_ignored" in s, err)
        async with aiohttp.ClientSession() as session, session.get(
                f"{base}/healthz") as response:
            assert response.status == 200
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        err.append((await stderr.read()).decode("utf-8", "replace"))
        assert await proc.wait() == 0, "".join(err)[-3000:]
    entries = [json.loads(line) for line in "".join(err).splitlines() if line]
    assert [e["level"] for e in entries if e["event"] == "daemon.sighup_ignored"] == [
        "warning", "warning"]


async def test_demo_process_serves_calls_and_flushes_on_sigterm(tmp_path: Path) -> None:
    """`callhub run --demo` as a newcomer runs it; SIGTERM leaves every finished call stored."""
    out: list[str] = []
    err: list[str] = []
    async with callhub_run(tmp_path, "--demo", "--demo-rate", "240", "--demo-speed", "10") as (
            proc, stdout, stderr):
        url_line = await read_until(stdout, lambda s: "callhub API:" in s, out)
        desk_line = await read_until(stdout, lambda s: "callhub desk:" in s, out)
        token_line = await read_until(stdout, lambda s: "demo admin token" in s, out)
        base = url_line.split()[2].rstrip("/")
        token = token_line.split()[-1]
        finished = 0

        def count(line: str) -> bool:
            nonlocal finished
            finished += '"call.finished"' in line
            return finished >= 5

        await read_until(stderr, count, err)
        # Keep draining stderr from here on: a full pipe would block the daemon's
        # (synchronous) log writes, and with them its event loop and our requests.
        drain = asyncio.ensure_future(stderr.read())
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/calls") as response:
                assert response.status == 401
            async with session.get(f"{base}/calls",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
            desk_url = desk_line.split()[-1]
            assert desk_url == base.removesuffix("/api/v1") + "/desk/"
            async with session.get(desk_url) as r:
                assert r.status == 200 and r.content_type == "text/html"
            async with session.get(base.removesuffix("/api/v1") + "/") as r:
                assert r.status == 200 and str(r.url) == desk_url  # / leads to the desk
        proc.send_signal(signal.SIGTERM)
        err.append((await drain).decode("utf-8", "replace"))
        assert await proc.wait() == 0, "".join(err)[-3000:]
    log = "".join(err)
    entries = [json.loads(line) for line in log.splitlines() if line]  # each one JSON object
    events = {e["event"]: e for e in entries}
    assert "api.no_tokens" not in events  # the demo made an admin token
    assert events["daemon.stopped"]["pending_calls"] == 0
    assert events["daemon.started"]["event_loop"] == "uvloop"  # installed with callhub
    # which build of the AMI parser and correlator runs: the one this install chose
    assert events["daemon.started"]["ami_hot_path"] == native.CHOSEN.runs
    assert "ami.native_stale" not in events
    logged = {e["linkedid"] for e in entries if e["event"] == "call.finished"}
    with sqlite3.connect(tmp_path / "callhub.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT linkedid FROM calls")}
        numbers = {row[0] for row in conn.execute(
            "SELECT external_number FROM calls WHERE external_number IS NOT NULL")}
    assert logged and logged <= stored  # every finished call is in the database
    # One info line per finished call, with the number masked to its last 4 digits.
    assert len([e for e in entries if e["event"] == "call.finished"]) == len(logged)
    assert numbers and not any(n in log for n in numbers if len(n) > 4)


@pytest.fixture
async def pg_behind_proxy(tmp_path: Path, pg_proxy: TcpProxy) -> AsyncIterator[Database]:
    """An empty PostgreSQL schema reached through `pg_proxy`."""
    factory = DbFactory("postgresql", tmp_path)
    try:
        yield await factory.create(url=via_proxy(pg_url(), pg_proxy))
    finally:
        await factory.cleanup()


def plain_settings(tmp_path: Path) -> Settings:
    return replace(Settings(), api_listen=("127.0.0.1", 0), spool_dir=str(tmp_path / "spool"))


async def until_logged(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """Poll the captured log (another task writes it) for `event`."""
    while True:
        found = [e for e in logs if e["event"] == event]
        if found:
            return found[0]
        await asyncio.sleep(0.02)  # a poll of another task's state, not a pause


@asynccontextmanager
async def started_in_a_task(d: Daemon) -> AsyncIterator[asyncio.Event]:
    """Start `d` in a task, as its start may wait: the event is set once every part runs;
    leaving the block stops it."""
    up, leave = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with running(d):
            up.set()
            await leave.wait()

    task = asyncio.create_task(run())
    try:
        yield up
    finally:
        leave.set()
        await task


async def test_a_database_not_up_yet_is_waited_for_at_start(
        tmp_path: Path, pg_proxy: TcpProxy, pg_behind_proxy: Database) -> None:
    """After a host's reboot PostgreSQL may come up after callhub: `callhub run` stopped on
    "ConnectionRefusedError" (not a word of the database). It waits, warns once, and
    starts (migrating) when the database answers."""
    pg_proxy.cut()
    d = Daemon(plain_settings(tmp_path), db=pg_behind_proxy, out=io.StringIO())
    with structlog.testing.capture_logs() as logs:
        async with started_in_a_task(d) as up, asyncio.timeout(WAIT):
            waiting = await until_logged(logs, "daemon.database_waiting")
            assert not up.is_set() and "***" in waiting["url"]
            pg_proxy.restore()
            await up.wait()
    assert [e["event"] for e in logs if e["event"].startswith("daemon.database")] == [
        "daemon.database_waiting", "daemon.database_reachable", "daemon.database"]
    assert await migrate.current_revision(pg_behind_proxy) == migrate.head_revision()


@asynccontextmanager
async def waiting_for_the_database(d: Daemon, logs: list[dict[str, Any]],
                                   before: Sequence[Part] = ()) -> AsyncIterator[None]:
    """`d` starting in a task, until it says it waits for the database; on leaving, it is
    stopped as SIGTERM does, and its start ends in StoppedWhileStarting."""
    task = asyncio.create_task(running(d, before=before).__aenter__())
    try:
        await until_logged(logs, "daemon.database_waiting")
        yield
    finally:
        d.stopping.set()  # as SIGTERM does
        with pytest.raises(StoppedWhileStarting):
            await task


async def test_a_stop_while_waiting_for_the_database_is_a_clean_stop(
        tmp_path: Path, pg_proxy: TcpProxy, pg_behind_proxy: Database) -> None:
    pg_proxy.cut()
    d = Daemon(plain_settings(tmp_path), db=pg_behind_proxy, out=io.StringIO())
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(WAIT), waiting_for_the_database(d, logs):
            pass
    assert [e["event"] for e in logs if e["event"].startswith(("daemon.", "election."))] == [
        "daemon.no_pbx", "daemon.database_waiting", "daemon.stopping"]


async def stored_linkedids(db: Database) -> list[str]:
    async with db.connection() as conn:
        return list((await conn.execute(sa.text("SELECT linkedid FROM calls"))).scalars())


async def test_calls_that_end_while_the_database_is_awaited_are_stored_once_it_answers(
        tmp_path: Path, pg_proxy: TcpProxy, pg_behind_proxy: Database,
        ami_simulator: AmiSimulator) -> None:
    """AMI is heard from the start: calls that end while callhub waits for PostgreSQL
    (nothing listened to AMI then) go to the spool. A stop meanwhile keeps them there;
    the next start, still waiting, hears more; all are stored once, when it answers."""
    pg_proxy.cut()
    settings = replace(plain_settings(tmp_path), pbxs=(sim_pbx(ami_simulator),))
    heard = desk_calls(ami_simulator)
    first = Daemon(settings, db=pg_behind_proxy, out=io.StringIO())
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(WAIT), waiting_for_the_database(first, logs):
            await first.ingests["lab"].wait_connected(WAIT)
            await ami_simulator.play_calls(heard[:2], speed=None)
            assert first.writer is not None
            await first.writer.wait_until(lambda w: w.pending == 2)
    assert [e["calls"] for e in logs if e["event"] == "writer.calls_left_in_spool"] == [2]

    second = Daemon(settings, db=pg_behind_proxy, out=io.StringIO())
    with structlog.testing.capture_logs() as logs:
        async with started_in_a_task(second) as up, asyncio.timeout(WAIT):
            await until_logged(logs, "daemon.database_waiting")
            await second.ingests["lab"].wait_connected(WAIT)
            await ami_simulator.play_calls(heard[2:], speed=None)
            assert second.writer is not None
            await second.writer.wait_until(lambda w: w.pending == len(heard))
            assert not up.is_set() and second.writer.written == 0
            pg_proxy.restore()
            await up.wait()
            await second.writer.wait_written()
    assert sorted(await stored_linkedids(pg_behind_proxy)) == sorted(
        c.linkedid for c in heard)


async def test_fastagi_routes_by_the_rota_while_the_database_is_awaited(
        tmp_path: Path, pg_proxy: TcpProxy, pg_behind_proxy: Database) -> None:
    """An inbound call while callhub waits for PostgreSQL is routed by the rota (it was
    the dialplan's default: FastAGI listened only once the database answered)."""
    pg_proxy.cut()
    with socket.socket() as s:  # a free port for FastAGI (the daemon does not report it)
        s.bind(("127.0.0.1", 0))
        agi_port = s.getsockname()[1]
    settings = replace(plain_settings(tmp_path), fastagi_listen=("127.0.0.1", agi_port))
    d = Daemon(settings, db=pg_behind_proxy, out=io.StringIO())
    demo = Demo(rate=0.1)  # its rota in memory, and a simulated PBX
    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(WAIT), waiting_for_the_database(d, logs, demo.before):
            answer = await agi_request("127.0.0.1", agi_port, asterisk_environment(
                did="4008001000", caller="+8613800000001", port=agi_port))
    assert answer.variables["CALLHUB_ROUTE_RESULT"] == "routed"
    assert answer.variables["CALLHUB_LINE"] == "hotline" and answer.targets


async def test_the_api_says_what_it_waits_for_while_the_database_is_awaited(
        tmp_path: Path, pg_proxy: TcpProxy, pg_behind_proxy: Database) -> None:
    """While callhub waits for PostgreSQL at start, nothing listened on the API's port: a
    liveness probe failed (an orchestrator restarted callhub in a loop) and /readyz could
    not say why. Now the health checks, /metrics and the rota answer; the routes that need
    the database answer 503 `starting` until it is ready, then serve."""
    pg_proxy.cut()
    settings = replace(plain_settings(tmp_path),
                       api_tokens=tuple(ApiToken(r, t) for r, t in TOKENS.items()))
    d = Daemon(settings, db=pg_behind_proxy, out=io.StringIO())
    demo = Demo(rate=0.1)  # a rota in memory, and a simulated PBX

    async def get(path: str, role: str = "admin") -> tuple[int, dict[str, Any], str | None]:
        async with aiohttp.ClientSession(headers=auth(role)) as http, \
                http.get(f"{d.api_url}{path}") as response:
            return response.status, await response.json(), response.headers.get("Retry-After")

    with structlog.testing.capture_logs() as logs:
        async with asyncio.timeout(WAIT), waiting_for_the_database(d, logs, demo.before):
            assert (await get("/healthz"))[0] == 200
            status, ready, _ = await get("/readyz", "viewer")
            assert status == 503 and not ready["ready"]
            assert ready["parts"]["database"]["reason"].startswith(
                "waiting for the database to answer (Connection")
            # It stores nothing yet, and says why (it said "standby", as if another wrote).
            assert ready["parts"]["role/demo"]["detail"] == "standby (not elected yet)"
            # What waits for the database says so (the follow-up keeper said "starting").
            assert ready["parts"]["keeper"]["reason"] == "waiting for the database"
            status, body, retry = await get("/api/v1/calls", "supervisor")
            assert (status, body["error"], retry) == (503, "starting", "5")
            assert (await get("/api/v1/stats", "viewer"))[0] == 503
            status, rotas, _ = await get("/api/v1/rotas")
            assert status == 200 and "hotline" in [line["name"] for line in rotas["lines"]]
            metrics = await get_text(f"{d.api_url}/metrics")
            assert "callhub_build_info" in metrics
            assert "daemon.api" not in [e["event"] for e in logs]  # not whole yet

    d = Daemon(settings, db=pg_behind_proxy, out=io.StringIO())
    pg_proxy.restore()
    async with started_in_a_task(d) as up, asyncio.timeout(WAIT):
        await up.wait()
        status, page, _ = await get("/api/v1/calls", "supervisor")
        assert status == 200 and page["items"] == []
        status, ready, _ = await get("/readyz", "viewer")
        assert ready["parts"]["database"] == {"ready": True, "required": True, "reason": None}
        assert ready["parts"]["keeper"]["ready"] is True


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.text()


async def test_a_refused_login_at_start_names_the_database(
        tmp_path: Path, pg_proxy: TcpProxy, pg_behind_proxy: Database) -> None:
    """Not waited for: an admin must mend it. The message names the database (masked)."""
    pg_proxy.refuse_logins()
    with pytest.raises(StartupError) as refused:
        async with asyncio.timeout(WAIT), running(Daemon(plain_settings(tmp_path),
                                                        db=pg_behind_proxy)):
            pass
    said = str(refused.value)
    assert said.startswith("database postgresql+asyncpg://") and "***" in said
    assert "password authentication failed" in said


async def test_a_sqlite_file_in_a_missing_directory_says_which(tmp_path: Path) -> None:
    """SQLite says only "unable to open database file"; callhub names the directory."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'callhub.db'}"
    settings = replace(plain_settings(tmp_path), database_url=url)
    with pytest.raises(StartupError, match=f"the directory {tmp_path / 'gone'} does not exist"):
        async with asyncio.timeout(WAIT), running(Daemon(settings)):
            pass
    assert not (tmp_path / "gone").exists()


async def test_a_hung_database_is_reported_and_does_not_hold_the_stop(
        tmp_path: Path, pg_proxy: TcpProxy, pg_behind_proxy: Database) -> None:
    """PostgreSQL stops answering with its sockets open (a frozen VM, packets dropped):
    /readyz says so within seconds, naming the database and the writer; the calls wait in
    the spool; SIGTERM stops the daemon without waiting for the socket to reset."""
    settings = replace(plain_settings(tmp_path),
                       api_tokens=tuple(ApiToken(r, t) for r, t in TOKENS.items()))
    d = Daemon(settings, db=pg_behind_proxy, out=io.StringIO())
    async with started_in_a_task(d) as up:
        async with asyncio.timeout(WAIT):
            await up.wait()
        assert d.writer is not None
        d.writer.batch_timeout = 0.5  # 30 s in production
        d.writer.stop_timeout = 1.0  # 10 s
        pg_proxy.freeze()
        d.writer.submit(make_call("hung-1", at=T0))
        async with asyncio.timeout(WAIT):
            await d.writer.wait_until(lambda w: w.failed_batches >= 1)
        async with aiohttp.ClientSession(headers=auth("viewer")) as http:
            asked = time.monotonic()
            async with asyncio.timeout(WAIT), http.get(f"{d.api_url}/readyz") as response:
                status, ready = response.status, await response.json()
            answered = time.monotonic() - asked
        assert status == 503 and answered < 3.0, answered  # its ping gives up at 2 s
        assert ready["parts"]["database"]["reason"].startswith("no answer")
        assert "TimeoutError" in ready["parts"]["writer"]["reason"]
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert took < d.writer.stop_timeout + 5.0, took
    assert [r.linkedid for r in Spool(settings.spool_dir).unstored()] == ["hung-1"]
