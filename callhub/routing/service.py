"""Wiring for `callhub run`: the router, its busy view, metrics and the FastAGI server.

`routing_part` is the daemon part (one line in `callhub.daemon.PARTS`, after
ingestion and before the API). By hand::

    routing = await start_routing(settings, registry=metrics.registry)
    routing.attach(ingest)                     # for each PbxIngest: busy devices from AMI
    make_app(..., router=routing.router)       # the API's /api/v1/agents and /api/v1/rotas
    ...
    await routing.close()

In the daemon FastAGI is the supervised task `fastagi`: it listens, serves
until stopped, and when it cannot listen (the port is taken) the part is
down on /readyz with a reason naming `fastagi.listen` /
CALLHUB_FASTAGI_LISTEN, and it tries again with backoff. Recording calls
goes on meanwhile; the dialplan dials its own default.

On PostgreSQL the rotation position is shared with the other instance of a
pair (callhub.routing.shared: the supervised task `route-positions` reconciles
and retries); on SQLite (a single instance) it stays in the state file.

A daemon whose `rota` is set routes by that rota in memory instead of the
state directory's (`callhub run --demo` sets the demo rota, every agent on
every line all day, so FastAGI answers as in production without touching the
real rota on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry

from callhub.config import Settings
from callhub.lifecycle import Health, PartDown, Supervisor
from callhub.routing.busy import BusyTracker
from callhub.routing.chooser import Router
from callhub.routing.fastagi import start_fastagi
from callhub.routing.metrics import RoutingMetrics
from callhub.routing.model import Rota
from callhub.routing.rota_file import RotaError
from callhub.routing.shared import SharedPositionMetrics, SharedPositions
from callhub.routing.state import POSITION_FILE, RotaStore, RotationState, state_dir
from callhub.store.db import Database

log = structlog.get_logger(__name__)

# Connections kept for the shared rotation position (one statement per call then, before
# the calls of a line arriving together were moved in one; the pool has one more, for
# reconciling). With 4, the calls of a burst queued for a connection
# in SQLAlchemy's pool, which cost more CPU and time than PostgreSQL queueing them on
# the row's lock: bench/route.py, shared, 20 concurrent, 3 runs each in turn (pooled, not
# kept yet): p99 11.0-11.3 ms, 2,886-2,968 calls/s, 335-350 us a call in callhub with 4;
# 8.4-10.4 ms, 3,499-3,708 calls/s, 260-270 us with 16.
SHARED_POOL = 16


def router_from_settings(settings: Settings,
                         busy: Callable[[], Iterable[str]] | None = None,
                         env: dict[str, str] | None = None) -> Router:
    """The production router: rota and rotation position in the routing state directory.

    An invalid `rota_file` seed is logged and routing starts empty (every call
    gets the dialplan's default) rather than keeping the daemon from starting.
    """
    directory = state_dir(settings, env)
    try:
        store = RotaStore(directory, seed_file=settings.rota_file)
    except RotaError as exc:
        log.error("routing.rota_file_invalid", error=str(exc),
                  hint="routing every call to the fallback")
        store = RotaStore(directory)
    return Router(store, RotationState(directory / POSITION_FILE), busy=busy,
                  default_timezone=settings.timezone)


@dataclass
class RoutingService:
    """The running routing part of the daemon."""

    router: Router
    busy: BusyTracker
    metrics: RoutingMetrics
    server: asyncio.Server | None
    shared: SharedPositions | None = None

    def attach(self, ingest: Any) -> None:
        """Feed a PbxIngest's events and open calls into the busy view."""
        ingest.add_listener(self.busy.feed, BusyTracker.EVENTS)
        self.busy.add_source(ingest.correlator.busy_interfaces)

    @property
    def address(self) -> tuple[str, int] | None:
        if self.server is None or not self.server.sockets:
            return None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def serve_fastagi(self, settings: Settings, health: Health) -> None:
        """The `fastagi` task: listen on fastagi.listen (if not yet), mark the part up, serve
        until cancelled. An address that cannot be bound raises PartDown naming the setting."""
        if self.server is None or not self.server.is_serving():
            try:
                self.server = await start_fastagi(settings, self.router, self.metrics)
            except OSError as exc:
                address = "{}:{}".format(*settings.fastagi_listen)
                raise PartDown(
                    f"cannot listen on {address}: {exc.strerror or exc}; set fastagi.listen "
                    f"in the config or CALLHUB_FASTAGI_LISTEN=host:port to a free address "
                    f"(meanwhile the dialplan dials its own default)") from exc
        health.up()
        await self.server.serve_forever()  # closes the server when cancelled

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.router.state.flush()
        if self.shared is not None:
            await self.shared.close()
            await self.shared.db.close()


async def start_routing(settings: Settings, *, registry: CollectorRegistry | None = None,
                        rota: Rota | None = None, listen: bool = True,
                        host: str | None = None,
                        port: int | None = None,
                        db: Database | None = None) -> RoutingService:
    """Build the router (from the state directory, or `rota` in memory) and start FastAGI
    (unless `listen=False`: the daemon serves it as a supervised task). With a PostgreSQL
    `db` the rotation position is shared through it (`service.shared.run()` must run:
    until its first reconcile the local file answers)."""
    busy = BusyTracker()
    if rota is not None:
        router = Router(rota, RotationState(None), busy=busy.busy_interfaces,
                        default_timezone=settings.timezone)
    else:
        router = router_from_settings(settings, busy=busy.busy_interfaces)
    metrics = RoutingMetrics(registry, router=router)
    shared = None
    if db is not None and db.dialect == "postgresql":
        # A small pool of its own: the writer's batches never hold up a routing decision,
        # and no checkout pays a ping (a dead connection fails over to the file instead).
        # A move is committed without waiting for the WAL flush: a PostgreSQL crash may
        # lose the last moves of a fraction of a second (a call starts one agent early),
        # never a call, and each routed call is spared a disk flush (~2 ms under load).
        own = db.connect_again(pool_size=SHARED_POOL + 1, max_overflow=0, pre_ping=False,
                               session={"synchronous_commit": "off"})
        shared = SharedPositions(own, router.state, connections=SHARED_POOL,
                                 metrics=SharedPositionMetrics(metrics.registry))
        router.shared = shared
    server = await start_fastagi(settings, router, metrics, host, port) if listen else None
    lines = router.rota.lines
    log.info("routing.ready", lines=len(lines), agents=len(router.rota.agents),
             source=router.rota.source)
    return RoutingService(router, busy, metrics, server, shared)


class DaemonLike(Protocol):
    """What `routing_part` reads from and adds to `callhub.daemon.Daemon`."""

    settings: Settings
    rota: Rota | None
    metrics: Any
    ingests: Any
    supervisor: Supervisor
    router: Router | None
    db: Database | None
    database_up: asyncio.Event  # set once the database answers and is migrated


@asynccontextmanager
async def routing_part(d: DaemonLike) -> AsyncIterator[None]:
    """`callhub run`: FastAGI on fastagi.listen (the supervised task `fastagi`), busy
    devices from every PBX's AMI, and the router published for the API's /api/v1/agents
    and /api/v1/rotas; by `d.rota` in memory when it is set (the demo's)."""
    registry = d.metrics.registry if d.metrics is not None else None
    # The demo's rota in memory keeps its position in memory too, away from the real rows.
    routing = await start_routing(d.settings, registry=registry, rota=d.rota, listen=False,
                                  db=d.db if d.rota is None else None)
    for ingest in d.ingests.values():
        routing.attach(ingest)
    d.router = routing.router
    health = d.supervisor.part("fastagi")
    try:
        async with contextlib.AsyncExitStack() as stack:
            if routing.shared is not None:
                shared = routing.shared

                async def positions() -> None:
                    # Not before the database is migrated (FastAGI may start first): until
                    # then the local file answers, and no session is opened on a database
                    # that callhub may yet refuse and leave.
                    await d.database_up.wait()
                    await shared.run()

                await stack.enter_async_context(d.supervisor.task(
                    "route-positions", positions, required=False))
            await stack.enter_async_context(d.supervisor.task(
                "fastagi", lambda: routing.serve_fastagi(d.settings, health),
                ready_on_start=False))
            await health.wait_settled()  # listening, or down with the reason: go on either way
            yield
    finally:
        await routing.close()
