"""FastAGI over a real loopback TCP socket: the test plays Asterisk byte for byte (the AGI
environment res_agi.c writes, then `200 result=0` to each command, read as Asterisk parses
it) and checks the channel variables the dialplan reads, the fallback on every kind of
failure, and the metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from routing_fixtures import AgiServer, asterisk_agi_request, berlin, samples

from callhub.config import Settings
from callhub.routing.agi_answer import MAX_LINE
from callhub.routing.chooser import Router
from callhub.routing.fastagi import start_fastagi
from callhub.routing.metrics import RoutingMetrics
from callhub.routing.state import POSITION_FILE, RotaStore, RotationState
from callhub.sim.agi_parse import agi_variables


async def play_asterisk(server: AgiServer, request: bytes, hangup_after: int | None = None,
                        ) -> dict[str, str]:
    """Send `request`, answer each command like Asterisk (`HANGUP` instead after
    `hangup_after` commands), return the variables set; each command must be an `EXEC MSet`
    line that res_agi.c reads whole."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    await writer.drain()
    variables: dict[str, str] = {}
    commands = 0
    while True:
        raw = await asyncio.wait_for(reader.readline(), 5)
        if not raw:
            break
        command = raw.decode("utf-8").rstrip("\n")
        assert command.startswith("EXEC MSet "), f"unexpected AGI command {command!r}"
        assert len(raw) <= MAX_LINE, "longer than the line res_agi.c reads"
        variables.update(agi_variables(command))
        commands += 1
        if hangup_after is not None and commands >= hangup_after:
            writer.write(b"HANGUP\n")
        else:
            writer.write(b"200 result=0\n")
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    return variables


async def test_round_trip_as_asterisk_sends_it(agi_server: AgiServer) -> None:
    variables = await play_asterisk(agi_server, asterisk_agi_request())
    assert variables == {
        "CALLHUB_TARGETS": "PJSIP/1001&PJSIP/1002&PJSIP/1003",
        "CALLHUB_TARGET_COUNT": "3",
        "CALLHUB_TARGET": "PJSIP/1001",
        "CALLHUB_RING_TIMEOUT": "12",
        "CALLHUB_RING_TIMEOUTS": "12&20&8",  # ann the line's, ben his own, cai the line's entry
        "CALLHUB_FALLBACK": "PJSIP/1000",
        "CALLHUB_LINE": "hotline",
        "CALLHUB_ROUTE_RESULT": "routed",
    }
    again = await play_asterisk(agi_server, asterisk_agi_request(uniqueid="1795922267.75"))
    assert again["CALLHUB_TARGETS"] == "PJSIP/1002&PJSIP/1003&PJSIP/1001"
    assert again["CALLHUB_RING_TIMEOUTS"] == "20&8&12"  # each timeout stays with its agent
    counted = samples(agi_server.metrics, "callhub_route_requests_total")
    assert counted == {(("line", "hotline"), ("result", "routed")): 2.0}
    duty = samples(agi_server.metrics, "callhub_agents_on_duty")
    assert duty[(("line", "hotline"),)] == 3.0  # ann, ben, cai: not the trainee, not eve


async def test_every_routed_call_is_timed_in_the_histogram(agi_server: AgiServer) -> None:
    """Each AGI session is observed once in callhub_route_seconds (latency figures
    themselves live in bench/route.py, not in a timed unit test)."""
    for i in range(20):
        variables = await play_asterisk(agi_server, asterisk_agi_request(uniqueid=f"1.{i}"))
        assert variables["CALLHUB_ROUTE_RESULT"] == "routed"
    histogram = samples(agi_server.metrics, "callhub_route_seconds_bucket")
    assert histogram[(("le", "+Inf"),)] == 20.0


async def test_two_simultaneous_calls_get_different_first_agents(agi_server: AgiServer) -> None:
    a, b = await asyncio.gather(
        play_asterisk(agi_server, asterisk_agi_request(uniqueid="2.1")),
        play_asterisk(agi_server, asterisk_agi_request(did="4008001005", uniqueid="2.2")))
    assert a["CALLHUB_TARGET"] != b["CALLHUB_TARGET"]
    assert {a["CALLHUB_TARGET"], b["CALLHUB_TARGET"]} == {"PJSIP/1001", "PJSIP/1002"}


async def test_nobody_on_duty_returns_the_fallback(agi_server: AgiServer) -> None:
    agi_server.router.clock = lambda: berlin("2026-12-25 10:00")  # closed for Christmas
    variables = await play_asterisk(agi_server, asterisk_agi_request())
    assert variables["CALLHUB_ROUTE_RESULT"] == "no_agent_on_duty"
    assert variables["CALLHUB_TARGETS"] == "" and variables["CALLHUB_TARGET_COUNT"] == "0"
    assert variables["CALLHUB_RING_TIMEOUTS"] == "" and variables["CALLHUB_RING_TIMEOUT"] == "12"
    assert variables["CALLHUB_FALLBACK"] == "PJSIP/1000"


async def test_internal_error_still_returns_the_fallback(agi_server: AgiServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(key: str | None, at: object = None) -> None:
        raise RuntimeError("database is down")

    monkeypatch.setattr(agi_server.router, "choose", broken)
    variables = await play_asterisk(agi_server, asterisk_agi_request())
    assert variables["CALLHUB_ROUTE_RESULT"] == "error"
    assert variables["CALLHUB_FALLBACK"] == "PJSIP/1000"
    assert variables["CALLHUB_LINE"] == "hotline"
    assert variables["CALLHUB_TARGET_COUNT"] == "0"
    counted = samples(agi_server.metrics, "callhub_route_requests_total")
    assert counted == {(("line", "hotline"), ("result", "error")): 1.0}


async def test_broken_rota_store_still_returns_an_answer(agi_server: AgiServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: Router) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(Router, "rota", property(unreadable))
    variables = await play_asterisk(agi_server, asterisk_agi_request())
    assert variables["CALLHUB_ROUTE_RESULT"] == "error"
    assert variables["CALLHUB_TARGET_COUNT"] == "0"


@pytest.mark.parametrize("request_bytes", [
    b"this is not agi\n\n",
    b"agi_network: yes\nGET / HTTP/1.1\n\n",
    b"\n",
    b"agi_network: yes\nagi_request: agi://x/" + b"x" * 20_000,  # a line past 16 KB, unended
    # A request that would route but for its size: one 20 KB value, or 300 variables.
    asterisk_agi_request(extra={"agi_accountcode": "x" * 20_000}),
    asterisk_agi_request(extra={f"agi_accountcode_{i}": "v" for i in range(300)}),
], ids=["text", "http", "empty", "long-line", "long-value", "many-variables"])
async def test_malformed_request_gets_the_fallback(agi_server: AgiServer,
                                                   request_bytes: bytes) -> None:
    variables = await play_asterisk(agi_server, request_bytes)
    assert variables["CALLHUB_ROUTE_RESULT"] == "malformed"
    assert variables["CALLHUB_FALLBACK"] == "PJSIP/1000"  # the rota's global fallback
    counted = samples(agi_server.metrics, "callhub_route_requests_total")
    assert counted == {(("line", "other"), ("result", "malformed")): 1.0}


async def test_wrong_script_is_malformed(agi_server: AgiServer) -> None:
    variables = await play_asterisk(agi_server, asterisk_agi_request(script="other"))
    assert variables["CALLHUB_ROUTE_RESULT"] == "malformed"
    assert variables["CALLHUB_FALLBACK"] == "PJSIP/1000"


async def test_unknown_did_and_line_from_agi_argument(agi_server: AgiServer) -> None:
    unknown = await play_asterisk(agi_server, asterisk_agi_request(did="5550000"))
    assert unknown["CALLHUB_ROUTE_RESULT"] == "unknown_line"
    assert unknown["CALLHUB_FALLBACK"] == "PJSIP/1000"
    by_arg = await play_asterisk(agi_server, asterisk_agi_request(
        did="s", extra={"agi_arg_1": "sales"}))
    assert by_arg["CALLHUB_LINE"] == "sales"
    assert by_arg["CALLHUB_TARGETS"] == "PJSIP/1001&PJSIP/1002"
    assert by_arg["CALLHUB_RING_TIMEOUTS"] == "15&20"  # sales: the default 15, ben's own 20


async def test_client_that_leaves_early_does_not_hurt_the_server(agi_server: AgiServer) -> None:
    _, writer = await asyncio.open_connection(agi_server.host, agi_server.port)
    writer.write(b"agi_network: yes\nagi_channel: PJSIP/trunk-1\n")  # no blank line
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    hung = await play_asterisk(agi_server, asterisk_agi_request(), hangup_after=1)
    assert hung["CALLHUB_ROUTE_RESULT"] == "routed"  # then HANGUP: the server closes
    variables = await play_asterisk(agi_server, asterisk_agi_request())
    assert variables["CALLHUB_ROUTE_RESULT"] == "routed"
    counted = samples(agi_server.metrics, "callhub_route_requests_total")
    assert counted[(("line", "other"), ("result", "malformed"))] == 1.0
    assert counted[(("line", "hotline"), ("result", "routed"))] == 2.0


async def test_reply_line_over_the_limit_is_skipped_and_the_answer_completes(
        agi_server: AgiServer) -> None:
    """A 20 KB reply line (over the stream's 16 KB limit) is dropped; routing still answers."""
    reader, writer = await asyncio.open_connection(agi_server.host, agi_server.port)
    writer.write(asterisk_agi_request())
    variables: dict[str, str] = {}
    first = True
    while raw := await asyncio.wait_for(reader.readline(), 5):
        variables.update(agi_variables(raw.decode("utf-8").rstrip("\n")))
        if first:
            writer.write(b"200 result=1 (" + b"x" * 20_000 + b")\n")
            first = False
        writer.write(b"200 result=0\n")
        await writer.drain()
    writer.close()
    assert variables["CALLHUB_ROUTE_RESULT"] == "routed"
    assert variables["CALLHUB_TARGETS"] == "PJSIP/1001&PJSIP/1002&PJSIP/1003"


async def test_a_client_that_only_ever_says_trying_is_cut_off(router: Router) -> None:
    """`100 Trying` for ever holds no handler past the answer deadline."""
    server = await start_fastagi(Settings(), router, host="127.0.0.1", port=0,
                                 answer_deadline=0.3)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(asterisk_agi_request())
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"EXEC MSet ")
        closed = asyncio.ensure_future(reader.read())  # b"" once the server hangs up
        for _ in range(100_000):  # bounded: the server must hang up long before
            if closed.done():
                break
            writer.write(b"100 result=0 Trying...\n")
            await writer.drain()
            await asyncio.wait({closed}, timeout=0.01)
        assert closed.done() and await closed == b""
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_metrics_share_a_registry_with_callhub() -> None:
    from callhub.metrics.collectors import CallhubMetrics

    registry = CollectorRegistry()
    CallhubMetrics(registry)
    RoutingMetrics(registry)
    names = {f.name for f in registry.collect()}
    assert {"callhub_route_requests", "callhub_route_seconds", "callhub_agents_on_duty",
            "callhub_calls"} <= names


HOSTILE_LINE = 'Sales, "VIP" \\ (Zürich) [2] = a|b;c ${X} 张三'
HOSTILE_FALLBACK = "Local/100,1(x)[y]=z;${EXTEN}@客服"


def interface(agent: str) -> str:
    return f"PJSIP/{agent}(x)[y]=z@zone-{agent}"


async def hostile_server(tmp_path: Path, agents: int) -> tuple[asyncio.Server, AgiServer]:
    """A FastAGI server whose rota has a line name and fallback full of what AGI and MSet
    parse (quotes, backslashes, commas, parentheses, brackets, `=`, spaces, non-ASCII) and
    `agents` agents on duty whatever the time."""
    names = [f"a{i}" for i in range(agents)]
    rota = tmp_path / "rota.toml"
    toml = json.dumps  # a JSON string or list of strings is a TOML one
    rota.write_text("\n".join([
        'timezone = "Europe/Berlin"',
        *(f"[[agents]]\nid = {toml(n)}\ninterface = {toml(interface(n))}" for n in names),
        "[[lines]]",
        f"name = {toml(HOSTILE_LINE, ensure_ascii=False)}",
        'dids = ["4008001004"]',
        f"rotation = {toml(names)}",
        f"fallback = {toml(HOSTILE_FALLBACK, ensure_ascii=False)}",
        "[[lines.shifts]]",
        'name = "always"\ndays = ["daily"]\nstart = "00:00"\nend = "24:00"',
        f"agents = {toml(names)}",
    ]) + "\n", encoding="utf-8")
    state = tmp_path / "state"
    router = Router(RotaStore(state, seed_file=str(rota)), RotationState(state / POSITION_FILE),
                    busy=set, clock=lambda: berlin("2026-11-30 10:00"))
    metrics = RoutingMetrics(router=router)
    server = await start_fastagi(Settings(), router, metrics, host="127.0.0.1", port=0)
    host, port = server.sockets[0].getsockname()[:2]
    return server, AgiServer(host, port, router, metrics)


async def test_hostile_values_arrive_as_the_rota_has_them(tmp_path: Path) -> None:
    server, agi = await hostile_server(tmp_path, agents=3)
    try:
        variables = await play_asterisk(agi, asterisk_agi_request())
    finally:
        server.close()
        await server.wait_closed()
    assert variables["CALLHUB_LINE"] == HOSTILE_LINE
    assert variables["CALLHUB_FALLBACK"] == HOSTILE_FALLBACK
    assert variables["CALLHUB_TARGETS"].split("&") == [interface(f"a{i}") for i in range(3)]
    assert variables["CALLHUB_ROUTE_RESULT"] == "routed"


async def session_lines(agi: AgiServer, reply: Callable[[int], bytes]) -> list[bytes]:
    """One AGI session as Asterisk plays it: the request, then `reply(n)` to the n-th
    command (from 1); the commands as they came."""
    reader, writer = await asyncio.open_connection(agi.host, agi.port)
    writer.write(asterisk_agi_request())
    lines: list[bytes] = []
    while raw := await asyncio.wait_for(reader.readline(), 5):
        lines.append(raw)
        writer.write(reply(len(lines)))
    writer.close()
    return lines


async def test_an_answer_longer_than_an_agi_line_goes_in_several(tmp_path: Path) -> None:
    """48 agents: the variables take ~2,130 bytes, over res_agi.c's 2,047-byte line; the
    answer comes in two MSets, one per reply, the result in the last."""
    server, agi = await hostile_server(tmp_path, agents=48)
    try:
        lines = await session_lines(agi, lambda _: b"200 result=0\n")
    finally:
        server.close()
        await server.wait_closed()
    assert len(lines) == 2 and all(len(raw) <= MAX_LINE for raw in lines)
    sets = [agi_variables(raw.decode("utf-8").rstrip("\n")) for raw in lines]
    assert sets[-1][-1] == ("CALLHUB_ROUTE_RESULT", "routed")
    variables = dict(pair for pairs in sets for pair in pairs)
    assert variables["CALLHUB_TARGET_COUNT"] == "48"
    assert variables["CALLHUB_TARGETS"].split("&") == [interface(f"a{i}") for i in range(48)]
    assert variables["CALLHUB_LINE"] == HOSTILE_LINE


async def test_usage_text_for_a_command_is_read_through_and_the_answer_completes(
        tmp_path: Path) -> None:
    """Asterisk answers a command it cannot run with `520-` usage text, several lines
    ending at `520 End of proper usage.`: callhub reads it through as the command's
    reply and goes on. An answer of two MSets (48 agents): the second follows, whole."""
    usage = (b"520-Invalid command syntax.  Proper usage follows:\n"
             b" Usage: EXEC <application> <options>\n"
             b"520 End of proper usage.\n")
    server, agi = await hostile_server(tmp_path, agents=48)
    try:
        lines = await session_lines(agi, lambda n: usage if n == 1 else b"200 result=0\n")
    finally:
        server.close()
        await server.wait_closed()
    assert len(lines) == 2
    variables = dict(pair for raw in lines
                     for pair in agi_variables(raw.decode("utf-8").rstrip("\n")))
    assert variables["CALLHUB_ROUTE_RESULT"] == "routed"
    assert variables["CALLHUB_TARGET_COUNT"] == "48"


async def test_an_environment_in_pieces_gets_the_same_answer(agi_server: AgiServer) -> None:
    """Asterisk writes the environment a line at a time: however it arrives, read alike."""
    request = asterisk_agi_request(extra={"agi_arg_1": "sales"})
    whole = await play_asterisk(agi_server, request)
    reader, writer = await asyncio.open_connection(agi_server.host, agi_server.port)
    for i in range(0, len(request), 7):  # cut mid-line, each piece sent on its own
        writer.write(request[i:i + 7])
        await writer.drain()
    raw = await asyncio.wait_for(reader.readline(), 5)
    writer.write(b"200 result=0\n")
    assert await reader.read() == b""
    writer.close()
    pieces = dict(agi_variables(raw.decode("utf-8").rstrip("\n")))
    assert whole["CALLHUB_TARGETS"] == "PJSIP/1001&PJSIP/1002"
    assert pieces["CALLHUB_TARGETS"] == "PJSIP/1002&PJSIP/1001"  # the next in the rotation
    same = ("CALLHUB_LINE", "CALLHUB_TARGET_COUNT", "CALLHUB_RING_TIMEOUT", "CALLHUB_FALLBACK",
            "CALLHUB_ROUTE_RESULT")
    assert [pieces[k] for k in same] == [whole[k] for k in same] == [
        "sales", "2", "15", "PJSIP/1000", "routed"]
