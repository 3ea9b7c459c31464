"""The HTTP door's limits over real sockets: half-sent heads are cut off, a flood of
connections is turned away at the cap, slow bodies get a 408, and the server keeps
answering real requests throughout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import ClientSession, web

from callhub.api.limits import Gate, GuardedSite, HttpLimits, install

MAX_BODY = 4096


@dataclass
class Served:
    url: str
    host: str
    port: int
    gate: Gate
    max_body: int


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/hello", _hello)
    app.router.add_post("/echo", _echo)
    gate = install(app, HttpLimits(max_connections=20, header_timeout=0.3, body_timeout=0.3))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, gate)
    await site.start()
    try:
        yield Served(f"http://127.0.0.1:{site.port}", "127.0.0.1", site.port, gate, MAX_BODY)
    finally:
        await runner.cleanup()


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server closes the connection (b"" or a reset); bounded wait."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def test_half_sent_heads_are_cut_off_and_real_requests_still_served(
        served: Served) -> None:
    conns = [await asyncio.open_connection(served.host, served.port) for _ in range(10)]
    for _, writer in conns:
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        await writer.drain()
    assert all(await asyncio.gather(*(_closed_by_server(r) for r, _ in conns)))
    assert served.gate.expired >= 10
    async with ClientSession() as session, session.get(served.url + "/hello") as resp:
        assert resp.status == 200 and await resp.text() == "hello"
    for _, writer in conns:
        writer.close()


async def test_connections_past_the_cap_are_turned_away_at_once(served: Served) -> None:
    held = [await asyncio.open_connection(served.host, served.port) for _ in range(20)]
    extra = [await asyncio.open_connection(served.host, served.port) for _ in range(30)]
    assert all(await asyncio.gather(*(_closed_by_server(r) for r, _ in extra)))
    assert served.gate.refused == 30
    # the held ones expire (no head) and free their places: a real request gets through
    assert all(await asyncio.gather(*(_closed_by_server(r) for r, _ in held)))
    assert not served.gate.open
    async with ClientSession() as session, session.get(served.url + "/hello") as resp:
        assert resp.status == 200
    for _, writer in held + extra:
        writer.close()


async def test_a_body_that_stops_coming_gets_408(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    assert status.startswith(b"HTTP/1.1 408")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"Content-Type: application/json" in head  # the API's errors are all JSON
    writer.close()


async def test_a_body_over_the_size_limit_gets_a_json_413(served: Served) -> None:
    async with ClientSession() as session, session.post(
            served.url + "/echo", data=b"x" * (served.max_body + 1)) as resp:
        assert resp.status == 413
        body = await resp.json()
    assert body["error"] == "request_entity_too_large", body
    assert str(served.max_body) in body["message"], body


async def test_an_idle_keep_alive_connection_is_not_cut_but_a_half_sent_second_head_is(
        served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    for _ in range(2):
        writer.write(request)
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readuntil(b"hello"), 5)
    # idle for longer than the head deadline: a late request on it is still answered
    late = asyncio.ensure_future(reader.read(1))
    done, _ = await asyncio.wait({late}, timeout=4 * served.gate.limits.header_timeout)
    assert not done, "an idle keep-alive connection was closed by the gate"
    writer.write(request)
    await writer.drain()
    assert (await asyncio.wait_for(late, 5)) == b"H"
    await asyncio.wait_for(reader.readuntil(b"hello"), 5)
    writer.write(b"GET /hello HTTP/1.1\r\n")  # a second head that never ends
    await writer.drain()
    assert await _closed_by_server(reader)
    writer.close()


async def test_keep_alive_requests_and_whole_bodies_pass(served: Served) -> None:
    async with ClientSession() as session:
        for i in range(3):  # one pooled connection, three requests
            async with session.post(served.url + "/echo", data=b"x" * i) as resp:
                assert resp.status == 200 and await resp.read() == b"x" * i
    assert served.gate.expired == 0 and served.gate.refused == 0
