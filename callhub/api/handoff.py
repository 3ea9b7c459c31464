"""The API port's connections dealt in turn to the daemon's process and its workers.

With SO_REUSEPORT the kernel picks the process for each connection by a hash
of its addresses. A few long-lived connections (a reverse proxy's keep-alive
pool, a dashboard's, a load test's clients) then land unevenly: 5 and 15 of 20
over two processes in one bench run, and the busier process set the p99.

So only the daemon's process listens. It accepts every connection and deals
them in turn: on its own turn it serves the connection; on a worker's turn it
sends the socket to that worker over a Unix socket pair (SCM_RIGHTS, one
connection per message), and the worker serves it as if it had accepted it.
Bytes the client sent meanwhile wait in the socket for whoever reads it. A
worker whose channel fails (it died) is dealt no more connections, and the one
it was being sent is served here, so no connection is lost with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

import structlog

log = structlog.get_logger(__name__)

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


READY = b"ready"  # a worker's one message to the dealer: it serves


async def announced(channel: socket.socket) -> bool:
    """Whether the worker at the other end of the dealer's `channel` said it serves (False
    when it died first: the channel closed). The caller bounds the wait."""
    return await asyncio.get_running_loop().sock_recv(channel, 16) == READY


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A channel: (the dealer's end, the worker's end). SOCK_SEQPACKET keeps each
    message, its byte and its socket, apart from the next. The dealer's end does not
    block: a worker that stopped reading is not waited for."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setblocking(False)
    return mine, theirs


class Dealer:
    """Deals the listener's connections in turn: to this process, then to each channel."""

    def __init__(self, channels: Sequence[socket.socket]) -> None:
        self.channels = list(channels)
        for channel in self.channels:  # as `channel_pair` makes them (these may be inherited)
            channel.setblocking(False)
        self._turn = 0
        self.sent = 0

    def factory(self, serve_here: ProtocolFactory) -> ProtocolFactory:
        """The listener's protocol factory: `serve_here`'s protocol on this process's
        turn, else one that hands the connection to the worker whose turn it is."""
        def make() -> asyncio.BaseProtocol:
            turn = self._turn % (len(self.channels) + 1)
            self._turn += 1
            if turn == 0:
                return serve_here()
            return _HandOver(self, self.channels[turn - 1], serve_here)
        return make

    def add(self, channel: socket.socket) -> None:
        """A worker that serves (its `channel_pair` end): dealt connections from now on."""
        self.channels.append(channel)

    def remove(self, channel: socket.socket) -> None:
        """A worker that ended: its channel closed, dealt nothing more."""
        if channel in self.channels:
            self.channels.remove(channel)
        channel.close()

    def lost(self, channel: socket.socket, error: OSError) -> None:
        """A channel that failed: its worker is dealt nothing more (`remove`)."""
        if channel in self.channels:
            self.remove(channel)
            log.warning("api.worker_channel_lost", error=type(error).__name__,
                        workers_left=len(self.channels))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.channels.clear()


class _HandOver(asyncio.Protocol):
    """A connection dealt to a worker: its socket sent over the channel, then this
    process's copy closed (the connection stays open in the worker). If the send fails,
    the connection is served here after all."""

    def __init__(self, dealer: Dealer, channel: socket.socket,
                 serve_here: ProtocolFactory) -> None:
        self.dealer, self.channel, self.serve_here = dealer, channel, serve_here
        self.inner: Any = None  # the protocol serving it here, when the send failed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        try:
            socket.send_fds(self.channel, [b"c"], [sock.fileno()])
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):  # else: behind, not gone
                self.dealer.lost(self.channel, exc)
            self.inner = self.serve_here()
            self.inner.connection_made(transport)
            return
        self.dealer.sent += 1
        # only this process's descriptor: the worker's stays open
        cast(asyncio.Transport, transport).abort()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)


class Receiver:
    """A worker's end of a channel: each connection it brings, served by `factory`'s
    protocol. `closed` is called once the dealer's end is gone (the daemon stopped)."""

    def __init__(self, channel: socket.socket, factory: ProtocolFactory,
                 closed: Callable[[], None]) -> None:
        self.channel, self.factory, self.closed = channel, factory, closed
        self.received = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.channel.setblocking(False)
        self._loop.add_reader(self.channel.fileno(), self._readable)

    def announce(self) -> None:
        """Tell the dealer this worker serves (`announced`). A daemon already gone is not
        told: the channel's close stops this worker."""
        with contextlib.suppress(OSError):
            self.channel.send(READY)

    def stop(self) -> None:
        if self._loop is not None and self.channel.fileno() != -1:
            self._loop.remove_reader(self.channel.fileno())
        self.channel.close()

    def _readable(self) -> None:
        assert self._loop is not None
        try:
            message, fds, _flags, _address = socket.recv_fds(self.channel, 1, 4)
        except BlockingIOError:
            return
        except OSError:
            message, fds = b"", []
        if not message:  # the dealer's end closed
            for fd in fds:
                os.close(fd)
            self.stop()
            self.closed()
            return
        for fd in fds:
            connection = socket.socket(fileno=fd)
            connection.setblocking(False)
            self.received += 1
            task = self._loop.create_task(
                self._loop.connect_accepted_socket(self.factory, connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
