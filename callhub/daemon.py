"""The daemon: AMI ingestion, the writer, routing and the API in one process with one lifecycle.

The daemon is a list of parts (`PARTS`). Each part is an async context
manager over the shared `Daemon`: it starts its piece, publishes what others
need on the Daemon, and stops it on the way out. They start in list order
and stop in reverse, in one `AsyncExitStack`, so the API stops taking
requests first, ingestion stops next, and the writer flushes every finished
call before the database closes. Adding a part (e.g. FastAGI) is one line
in `PARTS`. SIGTERM and SIGINT set `Daemon.stopping`.

AMI is heard before the database is waited for (a PostgreSQL that comes up
after callhub, after a reboot): the writer takes and spools calls from the
start, held, and stores them once the database is migrated (`storing`);
FastAGI routes by the rota meanwhile.

Background work runs on the Daemon's one `Supervisor` (callhub.lifecycle):
parts start their tasks there with a declared policy (restart with backoff,
or stop the daemon) and register their health, which /readyz reports part
by part. A task under the `stop` policy that dies stops `callhub run` with
exit status 1.

This module knows no simulator: `callhub run --demo` (callhub.run_cli) adds
the demo's parts from callhub.sim.demo before and after the production ones
(`serve(d, before=..., after=...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TextIO

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from callhub import __version__, loops
from callhub.ami import native
from callhub.ami.ingest import PbxIngest
from callhub.api import limits as http_limits
from callhub.api.app import make_app
from callhub.api.base import Operation
from callhub.api.health import database_check
from callhub.api.workers import Workers
from callhub.config import Settings
from callhub.desk import desk_operations, setup_desk
from callhub.desk.keeper import FollowupKeeper
from callhub.lifecycle import (
    Health,
    Retries,
    Supervisor,
    backoff_delay,
    describe,
    settle_heap,
    stopped_by_signals,
    wait_first,
    wait_set,
)
from callhub.metrics.collectors import CallhubMetrics
from callhub.metrics.http import metrics_handler
from callhub.records import CallRecord
from callhub.report.mailer import Clock, ReportMailer
from callhub.routing.chooser import Router
from callhub.routing.model import Rota
from callhub.routing.service import routing_part
from callhub.sms import SmsMetrics, SmsWorker, gateway_from_settings
from callhub.store import migrate, worklist
from callhub.store.db import Database
from callhub.store.election import Election
from callhub.store.failures import describe as describe_failure
from callhub.store.failures import explain, unreachable
from callhub.store.recovery import CelRecovery
from callhub.store.save import Saved, sync_agents
from callhub.store.sms_outbox import TableOutbox
from callhub.store.spool_lock import SpoolInUse, SpoolLock
from callhub.store.writer import CallWriter

log = structlog.get_logger(__name__)

WORKLIST_GAUGE_SECONDS = 15.0
# Waiting for the database at start: each try's bound, the first pause and the longest.
DATABASE_PING_SECONDS = 5.0
DATABASE_RETRY_FIRST, DATABASE_RETRY_MAX = 0.5, 10.0


class StartupError(RuntimeError):
    """A part cannot start (the message says what to do)."""


class StoppedWhileStarting(Exception):
    """SIGTERM/SIGINT came before callhub was up (while it waited for the database)."""


class PartFailed(RuntimeError):
    """A task under the `stop` policy died: the daemon stopped because of it."""


@dataclass
class Daemon:
    """What the parts share. Parts fill in the fields they own."""

    settings: Settings
    demo: bool = False  # set by the demo's parts: the PBX is a simulator
    migrate: bool = True
    out: TextIO = field(default_factory=lambda: sys.stdout)
    db: Database | None = None
    metrics: CallhubMetrics | None = None
    election: Election | None = None  # who writes each PBX (a pair on PostgreSQL)
    writer: CallWriter | None = None
    rota: Rota | None = None  # route by this rota in memory, not the state directory's
    ingests: dict[str, PbxIngest] = field(default_factory=dict)
    recoveries: dict[str, CelRecovery] = field(default_factory=dict)
    operations: list[Operation] = field(default_factory=list)
    router: Router | None = None
    sms: SmsWorker | None = None  # the SMS sender, with [sms]
    on_record: list[Callable[[CallRecord], None]] = field(default_factory=list)
    api_url: str | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    database_up: asyncio.Event = field(default_factory=asyncio.Event)  # answered, migrated
    supervisor: Supervisor = field(default_factory=Supervisor)
    report_clock: Clock | None = None  # the report mailer's clock (tests inject one)
    mailer: ReportMailer | None = None
    keeper: FollowupKeeper | None = None  # the desk's follow-ups (made by `api`)
    api_workers: Workers | None = None  # the API's other processes (made by `api`)

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
async def metrics_part(d: Daemon) -> AsyncIterator[None]:
    """Prometheus collectors, every finished call counted, GET /metrics on the API."""
    d.metrics = d.metrics or CallhubMetrics.from_settings(d.settings)
    d.on_record.append(d.metrics.observe_call)
    d.operations.append(Operation(
        "GET", "/metrics", metrics_handler(d.metrics.registry, d.settings.metrics_token), None,
        "Prometheus metrics (a bearer token only when api.metrics_token is set).", "metrics",
        produces=("text/plain",), database=False))
    yield


@asynccontextmanager
async def database(d: Daemon) -> AsyncIterator[None]:
    """The database's engine (nothing is asked of the database yet: `database_ready`
    waits for it, after ingestion has started); closed last."""
    own = d.db is None
    if d.db is None:
        try:
            d.db = Database.connect(d.settings.database_url,
                                    read_url=d.settings.read_database_url)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
    # /readyz: "starting" until `database_ready` says what it waits for, then a ping.
    d.supervisor.part("database", check=database_check(d.db))
    try:
        yield
    finally:
        if own:
            await d.db.close()


@asynccontextmanager
async def database_ready(d: Daemon) -> AsyncIterator[None]:
    """Wait for the database, apply the migrations (unless --no-migrate), copy the
    configured agents. After ingestion: calls that end meanwhile go to the spool, and
    the held writer stores them once `storing` opens it."""
    assert d.db is not None
    health = d.supervisor.part("database", check=database_check(d.db))
    await reachable(d, d.db, health)
    health.down("applying the migrations" if d.migrate else "checking the schema")
    try:
        await prepare_database(d, d.db)
    except (OSError, SQLAlchemyError) as exc:  # a refused login, no such database, ...
        raise StartupError(explain(d.db.url, exc)) from None
    log.info("daemon.database", url=d.db.url, revision=migrate.head_revision())
    health.up()
    d.database_up.set()
    yield


async def reachable(d: Daemon, db: Database, health: Health) -> None:
    """Until the database answers. A PostgreSQL still starting, or not reachable yet
    after the host's reboot, is waited for (warned of once per error, and `health` says
    so on /readyz), not a start that fails; SIGTERM meanwhile stops callhub
    (StoppedWhileStarting)."""
    retries, rng = Retries(), random.Random()
    while True:
        try:
            await db.ping(within=DATABASE_PING_SECONDS)
        except Exception as exc:
            if not unreachable(exc):
                return  # the steps that follow say what is wrong
            error = describe_failure(exc)
            news = retries.failed(error)
            health.down(f"waiting for the database to answer ({error}); {retries.tries} tries")
            # Jittered, as every retry of callhub's: a pair's two instances do not knock in
            # step on a PostgreSQL that is coming up.
            delay = backoff_delay(retries.tries - 1, DATABASE_RETRY_FIRST, DATABASE_RETRY_MAX,
                                  rng)
            if news:
                log.warning("daemon.database_waiting", url=db.url, error=error,
                            retry_in=round(delay, 2))
            await wait_set(d.stopping, delay)
            if d.stopping.is_set():
                log.info("daemon.stopping", waiting_for="database")
                raise StoppedWhileStarting from None
            continue
        if retries.succeeded():
            log.info("daemon.database_reachable", url=db.url)
        return


async def prepare_database(d: Daemon, db: Database) -> None:
    """Apply the migrations (or check the schema with --no-migrate); copy the agents."""
    if d.migrate:
        try:
            await migrate.upgrade(db)
        except migrate.SchemaError as exc:
            raise StartupError(str(exc)) from None
    else:
        try:
            await migrate.check_current(db)
        except migrate.SchemaBehind as exc:
            raise StartupError(f"{exc} (or drop --no-migrate)") from None
        except migrate.SchemaError as exc:
            raise StartupError(str(exc)) from None
    async with db.begin() as conn:
        await sync_agents(conn, d.settings)


@asynccontextmanager
async def election_part(d: Daemon) -> AsyncIterator[None]:
    """On PostgreSQL, the writer/standby election per PBX (a hot-standby pair: two
    instances, one configuration); on SQLite this instance writes every PBX. Made before
    the writer (its gate) and stopped after it, so a writer flushes before the standby
    takes over; started by `storing`, once the database answers."""
    assert d.db is not None
    d.election = Election(d.db, [p.name for p in d.settings.pbxs], supervisor=d.supervisor,
                          metrics=d.metrics)
    if d.metrics is not None:  # only the writer of a PBX exports its call metrics
        d.metrics.counts = d.election.is_writer
    try:
        yield
    finally:
        await d.election.stop()


@asynccontextmanager
async def writer_part(d: Daemon) -> AsyncIterator[None]:
    """The batched writer; a spool left by the last run is written first; flushed on stop.
    The spool directory is locked: a second instance on it is a startup error."""
    assert d.db is not None
    lock = SpoolLock(d.settings.spool_dir)
    try:
        lock.acquire()
    except SpoolInUse as exc:
        raise StartupError(str(exc)) from None
    gate = d.election if d.election is not None and d.election.elected else None
    try:
        d.writer = CallWriter(d.db, d.settings, metrics=d.metrics, supervisor=d.supervisor,
                              gate=gate, held=True)  # until `storing`
        d.on_record.append(d.writer.submit)
        await d.writer.start()
        try:
            yield
        finally:
            await d.writer.stop()
    finally:
        lock.release()


@asynccontextmanager
async def storing(d: Daemon) -> AsyncIterator[None]:
    """Calls are stored from here on: the database is ready, the parts that act on
    stored calls (the SMS queue's contacts, the worklist gauge) listen; the election
    starts (on PostgreSQL its writer is the one that stores) and the writer opens."""
    if d.election is not None:
        await d.election.start()
    if d.writer is not None:
        d.writer.open()
    yield


@asynccontextmanager
async def worklist_gauge(d: Daemon) -> AsyncIterator[None]:
    """Keep callhub_worklist_pending current (after each batch and every few seconds)."""
    if d.metrics is None or d.db is None or d.writer is None:
        yield
        return
    metrics, db, election = d.metrics, d.db, d.election
    nudge = asyncio.Event()

    async def refresh_loop() -> None:
        while True:
            if election is not None and "writer" not in election.roles.values():
                metrics.set_worklist(0, None)  # a pair's standby: the writer exports it
            else:
                try:
                    async with db.connection() as conn:
                        pending, oldest = await worklist.pending_summary(conn)
                    metrics.set_worklist(pending, oldest.timestamp() if oldest else None)
                except Exception as exc:  # the database may be down; the writer says so
                    log.debug("worklist_gauge.failed", error=type(exc).__name__)
            nudge.clear()
            await wait_set(nudge, WORKLIST_GAUGE_SECONDS)

    d.writer.listeners.append(lambda records, saved: nudge.set())
    async with d.supervisor.task("worklist-gauge", refresh_loop, required=False):
        yield


def rota_contacts(d: Daemon) -> Callable[[str], tuple[str | None, str | None] | None]:
    """interface -> (agent name, mobile) by the router's rota at the time of asking."""

    def lookup(interface: str) -> tuple[str | None, str | None] | None:
        rota = d.router.rota if d.router is not None else d.rota
        agent = rota.agent_by_interface(interface) if rota is not None else None
        return None if agent is None else (agent.name, agent.mobile)

    return lookup


@asynccontextmanager
async def sms_part(d: Daemon) -> AsyncIterator[None]:
    """With `[sms]`: the writer queues each call's SMS with the call; the supervised task
    `sms` sends them (callhub.sms.SmsWorker), woken after every committed batch."""
    settings = d.settings.sms
    if settings is None or d.db is None or d.writer is None:
        yield
        return
    registry = d.metrics.registry if d.metrics is not None else CollectorRegistry()
    lines = {line for pbx in d.settings.pbxs for line in pbx.lines.values()}
    lines |= {rule.line for rule in settings.rules if rule.line != "*"}
    metrics = SmsMetrics(registry, lines, settings.deadline_seconds)
    gateway = gateway_from_settings(settings)
    worker = SmsWorker.from_settings(TableOutbox(d.db), gateway, settings, metrics=metrics)
    d.writer.contacts = rota_contacts(d)
    d.sms = worker

    def stored(records: Sequence[CallRecord], saved: Saved) -> None:
        for line, reason in saved.sms_skipped:
            metrics.skipped(line, reason)
        if saved.sms_queued:
            worker.notify()

    d.writer.listeners.append(stored)
    log.info("daemon.sms", gateway=gateway.name, rules=len(settings.rules))
    try:
        async with d.supervisor.task("sms", worker.run, required=False,
                                     check=worker.readiness):
            yield
            worker.stop()
    finally:
        d.writer.listeners.remove(stored)
        await gateway.close()


@asynccontextmanager
async def ingestion(d: Daemon) -> AsyncIterator[None]:
    """One PbxIngest per configured PBX; finished calls go to `Daemon.record`.

    A PBX with a `cel_database_url` gets gap recovery: after every gap in its
    AMI stream, a supervised task (`cel/<pbx>`) rebuilds the calls nobody saw
    from its CEL table and hands them to the writer (callhub.store.recovery).
    """
    if not d.settings.pbxs:
        log.warning("daemon.no_pbx", hint="add a [[pbx]] table to the config; only the API "
                                          "runs")
    for pbx in d.settings.pbxs:
        missing = pbx.missing_login()
        if missing is not None:
            raise StartupError(missing)
        ingest = PbxIngest(pbx, d.record, metrics=d.metrics,
                           stale_after=d.settings.stale_call_seconds,
                           supervisor=d.supervisor, state_dir=d.settings.spool_dir,
                           undurable_since=None if d.writer is None
                           else functools.partial(d.writer.unspooled_since, pbx.name))
        d.ingests[pbx.name] = ingest
        if pbx.cel_database_url and d.writer is not None:
            recovery = CelRecovery(pbx, d.writer.submit, seen_on_ami=ingest.seen_on_ami,
                                   metrics=d.metrics)
            ingest.on_gap = recovery.gap
            d.recoveries[pbx.name] = recovery
    tasks = [d.supervisor.spawn(f"cel/{name}", recovery.run, required=False)
             for name, recovery in d.recoveries.items()]
    for ingest in d.ingests.values():
        await ingest.start()
    try:
        yield
    finally:
        for ingest in d.ingests.values():
            await ingest.stop()
        for task in tasks:
            await task.stop()
        for recovery in d.recoveries.values():
            recovery.close()


@asynccontextmanager
async def api(d: Daemon) -> AsyncIterator[None]:
    """The HTTP API on settings.api_listen (port 0: any free port), listening before the
    database is waited for: /healthz, /readyz (which says what is awaited), /metrics and
    the rota's routes answer from the start; the routes that need the database answer
    503 `starting` until it is ready, when `api_serving` starts the rest."""
    assert d.db is not None
    if not d.settings.api_tokens:
        log.warning("api.no_tokens",
                    hint="no API tokens are configured: every /api/v1 route and the desk will "
                         "answer 401. Set CALLHUB_API_TOKENS='admin:<token>,viewer:<token>' "
                         "(8+ characters each; roles viewer, supervisor, admin) or [api] "
                         "tokens in the config file")
    app = make_app(d.settings, d.db, ingests=d.ingests, metrics=d.metrics,
                   extra_operations=[*d.operations, *desk_operations()],
                   supervisor=d.supervisor, router=d.router, database_ready=d.database_up)
    d.keeper = setup_desk(app, writer=d.writer)  # /desk/ and the follow-up keeper
    # Started once the database is ready (`api_serving`): /readyz says so, not "starting".
    d.keeper.health.down("waiting for the database")
    gate = http_limits.install(app)  # connection cap, head and body deadlines
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = d.settings.api_listen
    try:
        if d.settings.api_workers > 1:
            # The others serve the connections this process deals them, and forward here
            # (a private loopback listener) what only this process answers.
            private = http_limits.GuardedSite(runner, "127.0.0.1", 0, gate)
            await private.start()
            d.api_workers = Workers(d.settings.api_workers - 1, d.settings,
                                    f"http://127.0.0.1:{private.port}", d.supervisor)
        site = http_limits.GuardedSite(
            runner, host, port, gate,
            dealer=d.api_workers.dealer if d.api_workers else None)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"the API cannot listen on {host}:{port}: {exc.strerror or exc}; set "
                f"api.listen in the config or CALLHUB_API_LISTEN=host:port to a free "
                f"address") from exc
        d.api_url = f"http://{host}:{site.port}"
        log.info("api.listening", url=d.api_url)
        yield
    finally:
        await runner.cleanup()


@asynccontextmanager
async def api_serving(d: Daemon) -> AsyncIterator[None]:
    """The API whole, once the database is ready: its read pool opened, the desk's
    follow-up keeper, the API's worker processes (`[api] workers`)."""
    assert d.db is not None and d.keeper is not None
    await d.db.open_reads()
    await d.keeper.start()
    try:
        if d.api_workers is not None:
            await d.api_workers.start()
        log.info("daemon.api", url=d.api_url, workers=d.settings.api_workers)
        print(f"callhub API: {d.api_url}/api/v1/  (OpenAPI: {d.api_url}/api/v1/openapi.json)",
              file=d.out, flush=True)
        print(f"callhub desk: {d.api_url}/desk/", file=d.out, flush=True)
        yield
    finally:
        if d.api_workers is not None:
            await d.api_workers.stop()
        await d.keeper.stop()


@asynccontextmanager
async def report_mailer(d: Daemon) -> AsyncIterator[None]:
    """Mail the report of each period that ends (`[report] schedule`), once per period."""
    if d.settings.report.period is None or d.db is None:
        yield
        return
    d.mailer = ReportMailer(d.db, d.settings, clock=d.report_clock)
    async with d.supervisor.task("report-mailer", d.mailer.run, required=False):
        yield


PARTS: list[Part] = [
    metrics_part,
    database,
    election_part,
    writer_part,
    ingestion,  # before the database is waited for: no call ends unheard meanwhile
    routing_part,  # and calls are routed by the rota meanwhile (positions: the local file)
    api,  # and /healthz, /readyz say so meanwhile
    database_ready,
    worklist_gauge,
    report_mailer,
    sms_part,
    storing,
    api_serving,
]


@asynccontextmanager
async def heap_settled(_d: Daemon) -> AsyncIterator[None]:
    """The `callhub run` process's last part: `settle_heap` once everything is built. Not
    in PARTS: tests run daemons inside pytest's own process."""
    settle_heap()
    yield


@asynccontextmanager
async def running(d: Daemon, parts: Sequence[Part] = PARTS, *, before: Sequence[Part] = (),
                  after: Sequence[Part] = ()) -> AsyncIterator[Daemon]:
    """Start every part in order (`before`, `parts`, then `after`: extra parts such as the
    demo's); on exit stop them in reverse (also after a failed start)."""
    try:
        async with contextlib.AsyncExitStack() as stack:
            for part in (*before, *parts, *after):
                await stack.enter_async_context(part(d))
            event_loop = loops.kind(asyncio.get_running_loop())
            if d.metrics is not None:
                d.metrics.build.info({"version": __version__, "ami_hot_path": native.CHOSEN.runs,
                                      "event_loop": event_loop})
            log.info("daemon.started", pbxs=[p.name for p in d.settings.pbxs], demo=d.demo,
                     event_loop=event_loop, ami_hot_path=native.CHOSEN.runs)
            if native.CHOSEN.stale:
                log.warning("ami.native_stale", reason=native.CHOSEN.reason,
                            hint="the AMI parser and correlator run as Python, about a "
                                 "third slower: installing callhub again compiles them")
            yield d
            log.info("daemon.stopping")
    finally:
        await d.supervisor.aclose()  # anything a part left running
    log.info("daemon.stopped", pending_calls=d.writer.pending if d.writer else 0)


async def serve(d: Daemon, parts: Sequence[Part] = PARTS, *, before: Sequence[Part] = (),
                after: Sequence[Part] = ()) -> None:
    """Run until SIGTERM/SIGINT (or `d.stopping` is set), then stop cleanly. `before` and
    `after` are extra parts started before and after `parts` (see `running`).

    A task under the `stop` policy that dies stops it too: PartFailed is raised
    after the clean stop.
    """
    with stopped_by_signals(d.stopping):
        async with running(d, parts, before=before, after=after):
            await wait_first(d.stopping.wait(), d.supervisor.failed.wait())
        if d.supervisor.failure is not None:
            name, exc = d.supervisor.failure
            raise PartFailed(f"{name} failed ({describe(exc)}); its policy stops the daemon")
