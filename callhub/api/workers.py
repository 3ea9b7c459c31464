"""More API processes on the daemon's port (`[api] workers`, `callhub run --workers N`).

One Python process answers at most about one core's worth of requests; on a
machine with more cores, `workers = N` starts N - 1 more processes that serve
the same API. Only the daemon's process listens on the port: it deals the
connections in turn to itself and to each worker (callhub/api/handoff.py), so
each process serves an equal share of them. Only the daemon's process runs AMI
ingestion, the writer, FastAGI and the desk's keeper: the others read and
write the database like any API client.

What only the daemon's process can answer (its in-memory state: the rota
routes, /readyz with each PBX's AMI, /metrics, the desk's pages) a worker
forwards to it, over a private loopback listener of the daemon's, so every
route answers the same whichever process the connection was dealt to; so is
anything the worker has no route for.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from callhub import loops
from callhub.api import followups, handoff
from callhub.api import limits as http_limits
from callhub.api.app import make_app
from callhub.api.base import Handler
from callhub.config import Settings
from callhub.lifecycle import PartDown, Supervisor, Task, settle_heap, stopped_by_signals
from callhub.logs import configure_logging
from callhub.store.db import Database

log = structlog.get_logger(__name__)

# Paths only the daemon's process answers (its rota, its AMI connections, its registry).
MAIN_ONLY = ("/readyz", "/metrics", "/api/v1/agents", "/api/v1/rotas", "/desk")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade",
                        "proxy-connection", "te", "trailer", "host", "content-length"})
START_TIMEOUT = 30.0
WORKER_HEADER = "X-Callhub-Worker"


def main_only(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MAIN_ONLY)


def forwarding(main_url: str) -> Any:
    """A middleware that forwards to `main_url` what only the daemon's process answers."""
    session: list[aiohttp.ClientSession] = []

    @web.middleware
    async def forward(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not main_only(request.path) and request.match_info.http_exception is None:
            return await handler(request)
        if not session:
            session.append(aiohttp.ClientSession(auto_decompress=False))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with session[0].request(request.method, main_url + request.path_qs,
                                      headers=headers, data=await request.read(),
                                      allow_redirects=False) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=body, headers=out)

    async def close(_app: web.Application) -> None:
        if session:
            await session[0].close()

    return forward, close


def worker_app(settings: Settings, db: Database, main_url: str) -> web.Application:
    """The API a worker serves: callhub's routes and the desk's follow-ups, the rest
    forwarded to the daemon's process."""
    forward, close = forwarding(main_url)
    app = make_app(settings, db, extra_operations=followups.OPERATIONS)
    app.middlewares.insert(0, forward)
    app.on_cleanup.append(close)
    app.on_response_prepare.append(_mark)
    return app


async def _mark(_request: web.Request, response: web.StreamResponse) -> None:
    """Which process answered (WORKER_HEADER: a worker's pid; absent: the daemon's)."""
    response.headers[WORKER_HEADER] = str(os.getpid())


async def serve(settings: Settings, channel: socket.socket, main_url: str,
                stop: asyncio.Event, ready: Callable[[], None] = lambda: None) -> None:
    """Serve `worker_app` on the connections the daemon deals over `channel` until `stop`
    is set, or until the daemon's end of the channel closes."""
    db = Database.connect(settings.database_url, read_url=settings.read_database_url)
    app = worker_app(settings, db, main_url)
    gate = http_limits.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    receiver = handoff.Receiver(channel, gate.protocol_factory(runner.server), stop.set)
    try:
        receiver.start()
        ready()
        log.info("api.worker_started", pid=os.getpid())  # written before the daemon's line
        receiver.announce()
        await stop.wait()
    finally:
        receiver.stop()
        await runner.cleanup()
        await db.close()


def _child(settings: Settings, channel: socket.socket, main_url: str) -> None:
    """A worker process: serve until SIGTERM, or until the daemon is gone."""
    configure_logging(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        with stopped_by_signals(stop):
            # settle_heap: this process is the worker's own.
            await serve(settings, channel, main_url, stop, settle_heap)

    loops.run(run(), settings.event_loop)


class Workers:
    """The N - 1 extra API processes of a daemon (spawned, so nothing of the daemon's
    state is inherited), each one a supervised task `api-worker-K` of the daemon: a
    worker that exits or is killed fails its task, is dealt no more connections, and is
    started again after the supervisor's backoff; /readyz names it meanwhile (a part not
    required: the daemon's process serves every connection alone meanwhile)."""

    def __init__(self, count: int, settings: Settings, main_url: str,
                 supervisor: Supervisor) -> None:
        self.count, self.settings, self.main_url = count, settings, main_url
        self.supervisor = supervisor
        self.dealer = handoff.Dealer([])
        """Deals the port's connections to this process and the workers (GuardedSite)."""
        self.tasks: list[Task] = []

    async def start(self) -> None:
        """Start them and wait until each serves (RuntimeError if one does not)."""
        for n in range(1, self.count + 1):
            name = f"api-worker-{n}"
            self.tasks.append(self.supervisor.spawn(
                name, functools.partial(self._serve, name), required=False,
                ready_on_start=False))
        for task in self.tasks:
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await task.health.wait_ready()
            except TimeoutError:
                raise RuntimeError(f"API worker {task.name} did not start serving within "
                                   f"{START_TIMEOUT:g} s") from None

    async def _serve(self, name: str) -> None:
        """One worker process, from its start until it ends (which fails the task)."""
        loop = asyncio.get_running_loop()
        mine, theirs = handoff.channel_pair()
        # The worker's end of its channel goes to the child as an inherited descriptor.
        process = multiprocessing.get_context("spawn").Process(
            target=_child, name="callhub-api-worker", daemon=True,
            args=(self.settings, theirs, self.main_url))
        process.start()
        theirs.close()  # the child has its own
        ended: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(process.sentinel, exited)
        try:
            # It says so over its channel (not a multiprocessing.Event, whose set() blocks
            # for good in the worker when the daemon is killed while waiting on it).
            async with asyncio.timeout(START_TIMEOUT):
                if not await handoff.announced(mine):
                    raise PartDown(f"worker {process.pid} exited before serving")
            self.dealer.add(mine)
            self.supervisor.parts[name].up()
            # Dealt connections and ready from here: the worker's own api.worker_started
            # comes before, while the daemon does not deal to it yet.
            log.info("api.worker_serving", task=name, pid=process.pid)
            await ended
            raise PartDown(f"worker {process.pid} exited (code {process.exitcode})")
        finally:
            loop.remove_reader(process.sentinel)
            self.dealer.remove(mine)
            await _end(process)

    async def stop(self) -> None:
        """Stop each worker (SIGTERM; killed after 10 s)."""
        for task in self.tasks:
            await task.stop()
        self.tasks.clear()
        self.dealer.close()


async def _end(process: BaseProcess) -> None:
    """SIGTERM `process`, and wait for it to exit (killed after 10 s)."""
    loop = asyncio.get_running_loop()
    if process.is_alive():
        process.terminate()
    await loop.run_in_executor(None, process.join, 10.0)
    if process.is_alive():
        process.kill()
        await loop.run_in_executor(None, process.join, 5.0)
