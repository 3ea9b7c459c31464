"""Connections dealt in turn over real TCP and Unix socket pairs (callhub/api/handoff.py).

Each connection's client writes its request at once, before the dealer has handed
the socket on: whoever serves it must still read every byte. A receiver whose
channel closes (its worker died) is dealt no more; the dealer's end closing
(the daemon gone) tells the receiver.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import cast

from callhub.api import handoff


class Echo(asyncio.Protocol):
    """Answers `<name>:<the line received>` and closes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.buffer.endswith(b"\n") and self.transport is not None:
            self.transport.write(self.name.encode() + b":" + self.buffer)
            self.transport.close()


async def _ask(port: int, n: int) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"request %d\n" % n)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    name, _, echoed = answer.partition(b":")
    return name.decode(), echoed


async def _dealing(count: int) -> tuple[handoff.Dealer, list[socket.socket], asyncio.Server]:
    pairs = [handoff.channel_pair() for _ in range(count)]
    dealer = handoff.Dealer([mine for mine, _ in pairs])
    server = await asyncio.get_running_loop().create_server(
        dealer.factory(lambda: Echo("here")), "127.0.0.1", 0)
    return dealer, [theirs for _, theirs in pairs], server


async def test_connections_go_round_and_lose_no_byte() -> None:
    dealer, theirs, server = await _dealing(2)
    gone = asyncio.Event()
    receivers = [handoff.Receiver(channel, functools.partial(Echo, f"w{i}"), gone.set)
                 for i, channel in enumerate(theirs)]
    for receiver in receivers:
        receiver.start()
    port = server.sockets[0].getsockname()[1]
    try:
        answers = [await _ask(port, n) for n in range(30)]
        assert [name for name, _ in answers] == ["here", "w0", "w1"] * 10
        assert [echoed for _, echoed in answers] == [b"request %d\n" % n for n in range(30)]
        assert dealer.sent == 20 and [r.received for r in receivers] == [10, 10]

        receivers[1].stop()  # that worker's end closes, as when it dies
        later = [await _ask(port, n) for n in range(30, 40)]
        assert [echoed for _, echoed in later] == [b"request %d\n" % n for n in range(30, 40)]
        assert {name for name, _ in later} == {"here", "w0"}
        assert len(dealer.channels) == 1
        assert not gone.is_set()  # the dealer's end of the live one is open
    finally:
        server.close()
        dealer.close()
        for receiver in receivers:
            receiver.stop()


async def test_a_receiver_sees_the_dealer_go() -> None:
    dealer, theirs, server = await _dealing(1)
    gone = asyncio.Event()
    receiver = handoff.Receiver(theirs[0], lambda: Echo("w0"), gone.set)
    receiver.start()
    server.close()
    dealer.close()
    await asyncio.wait_for(gone.wait(), 10)
    assert theirs[0].fileno() == -1
