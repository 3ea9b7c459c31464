"""Limits on the HTTP door: how many connections, how long to send a request head and body.

aiohttp reads a request's head without a deadline and accepts every
connection, so a few hundred clients that send half a head and wait hold a
file descriptor each until the process runs out (FastAGI then cannot accept
the dialplan's calls). `GuardedSite` is aiohttp's `TCPSite` with a gate in
front of every connection:

* past `max_connections` open connections a new one is closed at once;
* a connection must deliver a complete request head within `header_timeout`
  of opening, or of the first byte of its next request (an idle keep-alive
  connection is left to aiohttp's keep-alive timeout: closing it ourselves
  would race the browser's next POST on it);
* a request body must arrive within `body_timeout` (408 otherwise).

`install(app, limits)` adds the middleware that tells the gate when a
request is being handled; the site does the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web

from callhub.api.base import error_response
from callhub.api.handoff import Dealer

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_connections: int = 256
    header_timeout: float = 10.0
    body_timeout: float = 30.0


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's handler behind the gate's head deadline."""

    def __init__(self, inner: asyncio.Protocol, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.in_request = False
        self.next_request_started = False  # bytes came after this request's body
        self.timer: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass: no isinstance)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        if len(self.gate.open) >= self.gate.limits.max_connections:
            self.refused = True
            self.gate.refused += 1
            transport.abort()
            return
        self.gate.open[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.in_request:
            self.next_request_started = True
        elif self.timer is None:
            self.arm()  # the first bytes of a new head: it must be complete in time
        self.inner.data_received(data)

    def request_started(self) -> None:
        self.in_request = True
        self.next_request_started = False
        self.disarm()

    def body_read(self) -> None:
        self.next_request_started = False

    def request_finished(self) -> None:
        self.in_request = False
        if self.next_request_started:  # a pipelined head began meanwhile
            self.arm()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.refused:
            return
        if self.transport is not None:
            self.gate.open.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def arm(self) -> None:
        self.disarm()
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.gate.limits.header_timeout, self._expire)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.in_request or transport.get_write_buffer_size():
            self.arm()  # busy answering: look again later
            return
        self.gate.expired += 1
        transport.abort()


class Gate:
    """The open connections of one site and the counts of those it turned away."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.open: dict[asyncio.BaseTransport, _Guarded] = {}
        self.refused = 0
        self.expired = 0

    def protocol_factory(self, make_handler: Callable[[], Any]) -> Callable[[], _Guarded]:
        return lambda: _Guarded(make_handler(), self)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        guarded = self.open.get(request.transport) if request.transport else None
        if guarded is not None:
            guarded.request_started()
        try:
            if request.body_exists:  # JSON errors, as the app's (this runs before them)
                try:
                    async with asyncio.timeout(self.limits.body_timeout):
                        await request.read()
                except TimeoutError:
                    return error_response(408, "request_timeout", (
                        f"the request body did not arrive within "
                        f"{self.limits.body_timeout:g} s"))
                except web.HTTPRequestEntityTooLarge as exc:
                    return error_response(413, "request_entity_too_large",
                                          exc.text or "the request body is too large")
                if guarded is not None:
                    guarded.body_read()
            return await handler(request)
        finally:
            if guarded is not None:
                guarded.request_finished()


GATE: web.AppKey[Gate] = web.AppKey("http_gate", Gate)


def install(app: web.Application, limits: HttpLimits | None = None) -> Gate:
    """Put the gate's middleware first in `app` (before the app is frozen)."""
    gate = Gate(limits or HttpLimits())
    app[GATE] = gate
    app.middlewares.insert(0, gate.middleware)
    return gate


class GuardedSite(web.TCPSite):
    """aiohttp's TCPSite whose connections pass the app's gate (see `install`); with a
    `dealer`, those dealt to other processes go to them first (callhub/api/handoff.py)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, gate: Gate,
                 dealer: Dealer | None = None, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.gate = gate
        self.dealer = dealer

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        factory: Callable[[], Any] = self.gate.protocol_factory(server)
        if self.dealer is not None:
            factory = self.dealer.factory(factory)
        self._server = await loop.create_server(
            factory, self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port
