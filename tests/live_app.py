"""An aiohttp app served on a loopback port from its own event loop in a thread.

Schemathesis calls the API synchronously (requests), so the app cannot share
the test's loop; `LiveApp` runs it beside the test and tears it down after.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from callhub.store.db import Database

AppFactory = Callable[[], Awaitable[tuple[web.Application, Database]]]


class LiveApp:
    """`with LiveApp(factory) as live: live.base_url` -- factory runs on the app's loop."""

    def __init__(self, factory: AppFactory) -> None:
        self.factory = factory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.db: Database | None = None
        self.base_url = ""

    async def _start(self) -> str:
        app, self.db = await self.factory()
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.db is not None:
            await self.db.close()

    def __enter__(self) -> LiveApp:
        self.thread.start()
        self.base_url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def without_auth(case: Any) -> None:
    """Drop whatever Authorization header schemathesis generated for a case."""
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
