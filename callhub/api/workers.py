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
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from callhub.api import followups, handoff
from callhub.api import limits as http_limits
from callhub.api.app import make_app
from callhub.api.base import Handler
from callhub.config import Settings
from callhub.lifecycle import settle_heap
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
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # settle_heap: this process is the worker's own.
        await serve(settings, channel, main_url, stop, settle_heap)

    asyncio.run(run())


class Workers:
    """The N - 1 extra API processes of a daemon (spawned, so nothing of the daemon's
    state is inherited)."""

    def __init__(self, count: int, settings: Settings, main_url: str) -> None:
        self.count, self.settings, self.main_url = count, settings, main_url
        self.processes: list[BaseProcess] = []
        pairs = [handoff.channel_pair() for _ in range(count)]
        self.dealer = handoff.Dealer([mine for mine, _ in pairs])
        """Deals the port's connections to this process and the workers (GuardedSite)."""
        self._theirs = [theirs for _, theirs in pairs]

    async def start(self) -> None:
        """Start them and wait until each serves (RuntimeError if one does not)."""
        ctx = multiprocessing.get_context("spawn")
        for channel in self._theirs:
            # The worker's end of its channel goes to the child as an inherited descriptor.
            process = ctx.Process(target=_child, name="callhub-api-worker", daemon=True,
                                  args=(self.settings, channel, self.main_url))
            process.start()
            channel.close()  # the child has its own
            self.processes.append(process)
        self._theirs.clear()
        # Each says so over its channel (not a multiprocessing.Event, whose set() blocks
        # for good in the worker when the daemon is killed while waiting on it).
        for started, channel in zip(self.processes, self.dealer.channels, strict=True):
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    serving = await handoff.announced(channel)
            except TimeoutError:
                serving = False
            if not serving:
                raise RuntimeError(f"API worker {started.pid} did not start serving "
                                   f"within {START_TIMEOUT:g} s")

    async def stop(self) -> None:
        """SIGTERM each, and wait for them to exit (killed after 10 s)."""
        loop = asyncio.get_running_loop()
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            await loop.run_in_executor(None, process.join, 10.0)
            if process.is_alive():
                process.kill()
                await loop.run_in_executor(None, process.join, 5.0)
        self.processes.clear()
        self.dealer.close()
