"""More API processes on the daemon's port (`[api] workers`, `callhub run --workers N`).

One Python process answers at most about one core's worth of requests; on a
machine with more cores, `workers = N` starts N - 1 more processes that serve
the same API on the same address. Every process binds it with SO_REUSEPORT,
and the kernel spreads new connections over them. Only the daemon's own
process runs AMI ingestion, the writer, FastAGI and the desk's keeper: the
others read and write the database like any API client.

What only the daemon's process can answer (its in-memory state: the rota
routes, /readyz with each PBX's AMI, /metrics, the desk's pages) a worker
forwards to it, over a private loopback listener of the daemon's, so every
route answers the same whichever process the connection landed on; so is
anything the worker has no route for.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from callhub.api import followups
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


async def serve(settings: Settings, host: str, port: int, main_url: str,
                stop: asyncio.Event, ready: Callable[[], None] = lambda: None) -> None:
    """Serve `worker_app` on host:port (SO_REUSEPORT) until `stop` is set."""
    db = Database.connect(settings.database_url, read_url=settings.read_database_url)
    app = worker_app(settings, db, main_url)
    gate = http_limits.install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = http_limits.GuardedSite(runner, host, port, gate, reuse_port=True)
        await site.start()
        log.info("api.worker_started", port=port, pid=os.getpid())
        ready()
        await stop.wait()
    finally:
        await runner.cleanup()
        await db.close()


def _child(settings: Settings, host: str, port: int, main_url: str, ready: Event) -> None:
    """A worker process: serve until SIGTERM."""
    configure_logging(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        def started() -> None:
            settle_heap()  # this process is the worker's own
            ready.set()

        await serve(settings, host, port, main_url, stop, started)

    asyncio.run(run())


class Workers:
    """The N - 1 extra API processes of a daemon (spawned, so nothing of the daemon's
    state is inherited)."""

    def __init__(self, count: int, settings: Settings, host: str, port: int,
                 main_url: str) -> None:
        self.count, self.settings, self.host, self.port = count, settings, host, port
        self.main_url = main_url
        self.processes: list[BaseProcess] = []

    async def start(self) -> None:
        """Start them and wait until each listens (RuntimeError if one does not)."""
        ctx = multiprocessing.get_context("spawn")
        events: Sequence[Event] = [ctx.Event() for _ in range(self.count)]
        for ready in events:
            process = ctx.Process(target=_child, name="callhub-api-worker", daemon=True,
                                  args=(self.settings, self.host, self.port, self.main_url,
                                        ready))
            process.start()
            self.processes.append(process)
        loop = asyncio.get_running_loop()
        for started, ready in zip(self.processes, events, strict=True):
            if not await loop.run_in_executor(None, ready.wait, START_TIMEOUT):
                raise RuntimeError(f"API worker {started.pid} did not start listening "
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
