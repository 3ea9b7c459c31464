"""`callhub run`: AMI ingestion, the writer and the API in one process with one lifecycle.

The daemon is a list of parts (`PARTS`). Each part is an async context
manager over the shared `Daemon`: it starts its piece, publishes what others
need on the Daemon, and stops it on the way out. They start in list order
and stop in reverse, in one `AsyncExitStack`, so the API stops taking
requests first, ingestion stops next, and the writer flushes every finished
call before the database closes. Adding a part (e.g. FastAGI) is one line
in `PARTS`. SIGTERM and SIGINT set `Daemon.stopping`.

Background work runs on the Daemon's one `Supervisor` (callhub.lifecycle):
parts start their tasks there with a declared policy (restart with backoff,
or stop the daemon) and register their health, which /readyz reports part
by part. A task under the `stop` policy that dies stops `callhub run` with
exit status 1.

`--demo` puts the built-in AMI simulator in front as the PBX, with a steady
mix of realistic calls, on the embedded SQLite default, and prints the API
URL and a generated admin token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import structlog
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from callhub.ami.ingest import PbxIngest
from callhub.ami.simulator import AmiSimulator
from callhub.ami.synth import DEMO_DIDS, MixSettings, template_for
from callhub.api import limits as http_limits
from callhub.api.app import make_app
from callhub.api.base import Operation
from callhub.api.health import database_check
from callhub.config import ApiToken, Settings, load_settings, settings_from_mapping
from callhub.desk import desk_operations, setup_desk
from callhub.lifecycle import Policy, Supervisor, describe
from callhub.logs import configure_logging
from callhub.metrics.collectors import CallhubMetrics
from callhub.metrics.http import metrics_handler
from callhub.records import CallRecord
from callhub.routing.service import routing_part
from callhub.store import migrate, queries, worklist
from callhub.store.db import Database
from callhub.store.save import sync_agents
from callhub.store.writer import CallWriter

log = structlog.get_logger(__name__)

DEMO_LINES = dict(zip(DEMO_DIDS, ("hotline", "repairs", "complaints", "front-desk"),
                      strict=True))
WORKLIST_GAUGE_SECONDS = 15.0
DEMO_CALLBACK_SECONDS = 20.0


class StartupError(RuntimeError):
    """A part cannot start (the message says what to do)."""


class PartFailed(RuntimeError):
    """A task under the `stop` policy died: the daemon stopped because of it."""


@dataclass
class Daemon:
    """What the parts share. Parts fill in the fields they own."""

    settings: Settings
    demo: bool = False
    migrate: bool = True
    demo_rate: float = 12.0
    demo_speed: float = 1.0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    db: Database | None = None
    metrics: CallhubMetrics | None = None
    writer: CallWriter | None = None
    simulator: AmiSimulator | None = None
    ingests: dict[str, PbxIngest] = field(default_factory=dict)
    operations: list[Operation] = field(default_factory=list)
    on_record: list[Callable[[CallRecord], None]] = field(default_factory=list)
    api_url: str | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    supervisor: Supervisor = field(default_factory=Supervisor)

    def record(self, record: CallRecord) -> None:
        """A finished call from any PBX: every `on_record` callback gets it, in order."""
        for callback in self.on_record:
            try:
                callback(record)
            except Exception:
                log.exception("daemon.on_record_failed", linkedid=record.linkedid)


Part = Callable[[Daemon], AbstractAsyncContextManager[None]]


# -- the parts, in start order ------------------------------------------------



@asynccontextmanager
async def demo_simulator(d: Daemon) -> AsyncIterator[None]:
    """--demo: the AMI simulator as the PBX, a steady call mix, a generated admin token."""
    if not d.demo:
        yield
        return
    secret = secrets.token_urlsafe(12)
    sim = AmiSimulator("127.0.0.1", 0, username="callhub", secret=secret)
    port = await sim.start()
    config = {k: v for k, v in template_for("answered").config.items() if k != "pbx"}
    config.update(name="demo", host="127.0.0.1", port=port, username="callhub",
                  secret=secret, lines=DEMO_LINES)
    demo_pbx = settings_from_mapping({"pbx": [config]}).pbxs[0]
    tokens = d.settings.api_tokens or (ApiToken("admin", secrets.token_urlsafe(18)),)
    d.settings = replace(d.settings, pbxs=(demo_pbx,), api_tokens=tokens)
    d.simulator = sim
    # Real time by default (calls carry real times); talks shortened so the first
    # minute already shows answered, missed and abandoned calls.
    mix_settings = MixSettings(rate_per_minute=d.demo_rate, talk_range=(4.0, 25.0))
    log.info("demo.simulator", port=port, calls_per_minute=d.demo_rate, speed=d.demo_speed)
    try:
        # The demo's PBX traffic: without it the demo shows nothing, so its death stops it.
        async with d.supervisor.task("demo-mix", lambda: sim.run_mix(
                d.demo_rate, speed=d.demo_speed, settings=mix_settings),
                policy=Policy.STOP, required=False):
            yield
    finally:
        await sim.stop()


@asynccontextmanager
async def metrics_part(d: Daemon) -> AsyncIterator[None]:
    """Prometheus collectors, every finished call counted, GET /metrics on the API."""
    d.metrics = d.metrics or CallhubMetrics.from_settings(d.settings)
    d.on_record.append(d.metrics.observe_call)
    d.operations.append(Operation(
        "GET", "/metrics", metrics_handler(d.metrics.registry, d.settings.metrics_token), None,
        "Prometheus metrics (a bearer token only when api.metrics_token is set).", "metrics",
        produces=("text/plain",)))
    yield


@asynccontextmanager
async def database(d: Daemon) -> AsyncIterator[None]:
    """Connect, apply the migrations (unless --no-migrate), copy the configured agents."""
    own = d.db is None
    if d.db is None:
        d.db = Database.connect(d.settings.database_url)
    try:
        if d.migrate:
            await migrate.upgrade(d.db)
        else:
            current, head = await migrate.current_revision(d.db), migrate.head_revision()
            if current != head:
                raise StartupError(f"the database is at revision {current}, callhub needs "
                                   f"{head}: run `callhub db upgrade` (or drop --no-migrate)")
        async with d.db.begin() as conn:
            await sync_agents(conn, d.settings)
        log.info("daemon.database", url=d.db.url, revision=migrate.head_revision())
        d.supervisor.part("database", check=database_check(d.db), ready=True)
        yield
    finally:
        if own:
            await d.db.close()


@asynccontextmanager
async def writer_part(d: Daemon) -> AsyncIterator[None]:
    """The batched writer; a spool left by the last run is written first; flushed on stop."""
    assert d.db is not None
    d.writer = CallWriter(d.db, d.settings, metrics=d.metrics, supervisor=d.supervisor)
    d.on_record.append(d.writer.submit)
    await d.writer.start()
    try:
        yield
    finally:
        await d.writer.stop()


@asynccontextmanager
async def worklist_gauge(d: Daemon) -> AsyncIterator[None]:
    """Keep callhub_worklist_pending current (after each batch and every few seconds)."""
    if d.metrics is None or d.db is None or d.writer is None:
        yield
        return
    metrics, db = d.metrics, d.db
    nudge = asyncio.Event()

    async def refresh_loop() -> None:
        while True:
            try:
                async with db.connection() as conn:
                    pending, oldest = await worklist.pending_summary(conn)
                metrics.set_worklist(pending, oldest.timestamp() if oldest else None)
            except Exception as exc:  # the database may be down; the writer reports that
                log.debug("worklist_gauge.failed", error=type(exc).__name__)
            nudge.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudge.wait(), WORKLIST_GAUGE_SECONDS)

    d.writer.listeners.append(lambda records, saved: nudge.set())
    async with d.supervisor.task("worklist-gauge", refresh_loop, required=False):
        yield


@asynccontextmanager
async def demo_callbacks(d: Daemon) -> AsyncIterator[None]:
    """--demo: an agent calls back the oldest pending caller now and then (how=callback)."""
    if d.simulator is None or d.db is None:
        yield
        return
    sim, db = d.simulator, d.db
    every = DEMO_CALLBACK_SECONDS / max(d.demo_speed, 0.1)

    async def call_back() -> None:
        while True:
            await asyncio.sleep(every)  # pacing of the demo, not synchronisation
            async with db.connection() as conn:
                oldest = await queries.list_worklist(
                    conn, queries.WorklistFilter(status="pending"), 1)
            if not oldest:
                continue
            now = max(sim.clock(), sim.stream_now)  # the mix may run ahead (--demo-speed)
            call = sim.factory.make("outbound", now, number=oldest[0]["number"],
                                    agent="Local/agent2@agentsim", ring_seconds=4.0,
                                    talk_seconds=8.0)
            await sim.send_call(call, speed=d.demo_speed)

    async with d.supervisor.task("demo-callbacks", call_back, required=False):
        yield


@asynccontextmanager
async def ingestion(d: Daemon) -> AsyncIterator[None]:
    """One PbxIngest per configured PBX; finished calls go to `Daemon.record`."""
    if not d.settings.pbxs:
        log.warning("daemon.no_pbx", hint="add a [[pbx]] table to the config; only the API "
                                          "runs")
    for pbx in d.settings.pbxs:
        if not (pbx.username and pbx.secret):
            raise StartupError(f"pbx[{pbx.name}]: username and secret are needed to connect "
                               f"to AMI (CALLHUB_PBX_<NAME>_SECRET can supply the secret)")
        d.ingests[pbx.name] = PbxIngest(pbx, d.record, metrics=d.metrics,
                                        stale_after=d.settings.stale_call_seconds,
                                        supervisor=d.supervisor)
    for ingest in d.ingests.values():
        await ingest.start()
    try:
        yield
    finally:
        for ingest in d.ingests.values():
            await ingest.stop()


@asynccontextmanager
async def api(d: Daemon) -> AsyncIterator[None]:
    """The HTTP API on settings.api_listen (port 0: any free port), the desk and its keeper."""
    assert d.db is not None
    if not d.settings.api_tokens:
        log.warning("api.no_tokens",
                    hint="no API tokens are configured: every /api/v1 route and the desk will "
                         "answer 401. Set CALLHUB_API_TOKENS='admin:<token>,viewer:<token>' "
                         "(8+ characters each; roles viewer, supervisor, admin) or [api] "
                         "tokens in the config file")
    app = make_app(d.settings, d.db, ingests=d.ingests, metrics=d.metrics,
                   extra_operations=[*d.operations, *desk_operations()],
                   supervisor=d.supervisor)
    keeper = setup_desk(app, writer=d.writer)  # /desk/ and the follow-up keeper
    gate = http_limits.install(app)  # connection cap, head and body deadlines
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = d.settings.api_listen
    await keeper.start()
    try:
        site = http_limits.GuardedSite(runner, host, port, gate)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"the API cannot listen on {host}:{port}: {exc.strerror or exc}; set "
                f"api.listen in the config or CALLHUB_API_LISTEN=host:port to a free "
                f"address") from exc
        bound = runner.addresses[0][1] if runner.addresses else port
        d.api_url = f"http://{host}:{bound}"
        log.info("daemon.api", url=d.api_url)
        print(f"callhub API: {d.api_url}/api/v1/  (OpenAPI: {d.api_url}/api/v1/openapi.json)",
              file=d.out, flush=True)
        print(f"callhub desk: {d.api_url}/desk/", file=d.out, flush=True)
        if d.demo:
            admin = next(t.token for t in d.settings.api_tokens if t.role == "admin")
            print(f"demo admin token: {admin}\n"
                  f"try: curl -H 'Authorization: Bearer {admin}' {d.api_url}/api/v1/calls",
                  file=d.out, flush=True)
        yield
    finally:
        await runner.cleanup()
        await keeper.stop()


PARTS: list[Part] = [
    demo_simulator,
    metrics_part,
    database,
    writer_part,
    worklist_gauge,
    ingestion,
    demo_callbacks,
    routing_part,
    api,
]


@asynccontextmanager
async def running(d: Daemon, parts: Sequence[Part] = PARTS) -> AsyncIterator[Daemon]:
    """Start every part in order; on exit stop them in reverse (also after a failed start)."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            for part in parts:
                await stack.enter_async_context(part(d))
            log.info("daemon.started", pbxs=[p.name for p in d.settings.pbxs], demo=d.demo)
            yield d
            log.info("daemon.stopping")
    finally:
        await d.supervisor.aclose()  # anything a part left running
    log.info("daemon.stopped", pending_calls=d.writer.pending if d.writer else 0)


async def serve(d: Daemon, parts: Sequence[Part] = PARTS) -> None:
    """Run until SIGTERM/SIGINT (or `d.stopping` is set), then stop cleanly.

    A task under the `stop` policy that dies stops it too: PartFailed is raised
    after the clean stop.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, d.stopping.set)
    try:
        async with running(d, parts):
            waiters = {asyncio.ensure_future(d.stopping.wait()),
                       asyncio.ensure_future(d.supervisor.failed.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if d.supervisor.failure is not None:
            name, exc = d.supervisor.failure
            raise PartFailed(f"{name} failed ({describe(exc)}); its policy stops the daemon")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the daemon (AMI ingestion, writer, API, FastAGI routing)",
        description="Listen to every configured PBX's AMI, store each finished call, keep "
                    "the worklist, route calls over FastAGI and serve the HTTP API and /metrics. "
                    "SIGTERM/SIGINT stop it cleanly.")
    parser.add_argument("--demo", action="store_true",
                        help="use the built-in AMI simulator as the PBX (a steady call mix)")
    parser.add_argument("--no-migrate", action="store_true",
                        help="do not apply database migrations on start")
    parser.add_argument("--demo-rate", type=float, default=12.0, metavar="N",
                        help="--demo: calls per minute (default 12)")
    parser.add_argument("--demo-speed", type=float, default=1.0, metavar="X",
                        help="--demo: run the simulated clock X times faster (default 1)")
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.log_level)
    d = Daemon(settings, demo=args.demo, migrate=not args.no_migrate,
               demo_rate=args.demo_rate, demo_speed=args.demo_speed)
    try:
        asyncio.run(serve(d))
    except StartupError as exc:
        print(f"callhub: {exc}", file=sys.stderr)
        return 2
    except PartFailed as exc:
        print(f"callhub: {exc}", file=sys.stderr)
        return 1
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"callhub: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    return 0

