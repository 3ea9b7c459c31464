"""One log pipeline: callhub's structlog lines and the libraries' standard-library records
come out alike (JSON with timestamp and level off a terminal); event names are
`area.event`; an AMI event the correlator cannot apply is counted and logged once."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from ami_fixtures import Collector, make_ingest, sim_pbx
from desk_fixtures import Desk
from prometheus_client import CollectorRegistry
from store_fixtures import make_call, store
from structlog.testing import capture_logs

from callhub.logs import configure_logging
from callhub.metrics.collectors import CallhubMetrics
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "callhub"
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """configure_logging to a buffer (JSON, info); the previous set-up is restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True)
    try:
        yield stream
    finally:
        structlog.reset_defaults()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        logging.getLogger("callhub").setLevel(logging.NOTSET)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line of the stream, each of which must be one JSON object."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_library_records_and_callhub_events_are_one_json_format(
        log_stream: io.StringIO) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        raise ZeroDivisionError("a bug in a handler")

    app = web.Application()  # no json_errors middleware: aiohttp itself logs the error
    app.router.add_get("/", broken)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/")).status == 500
    logging.getLogger("sqlalchemy.engine.Engine").info("BEGIN (implicit)")  # library chatter
    log = structlog.get_logger("callhub.test")
    log.info("test.hello", answer=42)
    log.debug("test.hidden")

    got = lines(log_stream)
    assert got, "nothing was logged"
    for entry in got:
        assert {"event", "level", "timestamp"} <= set(entry), entry
        assert entry["timestamp"].endswith("Z")
    by_event = {e["event"]: e for e in got}
    aiohttp_error = next(e for e in got if e.get("logger") == "aiohttp.server")
    assert aiohttp_error["level"] == "error"
    assert "ZeroDivisionError: a bug in a handler" in aiohttp_error["exception"]
    assert by_event["test.hello"]["level"] == "info" and by_event["test.hello"]["answer"] == 42
    assert "test.hidden" not in by_event and "BEGIN (implicit)" not in by_event


async def test_a_request_line_too_long_is_one_warning_without_its_bytes(
        log_stream: io.StringIO) -> None:
    """A client's malformed request is its fault: aiohttp logged it at error, with a
    traceback and the URL's first bytes (here a caller's number)."""
    async def hello(request: web.Request) -> web.StreamResponse:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    number = "13912345678"
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(f"GET /?number={number}&pad={'x' * 9000} HTTP/1.1\r\n"
                         "Host: callhub\r\n\r\n".encode())
            await writer.drain()
            async with asyncio.timeout(10):
                status_line = await reader.readline()
        finally:
            writer.close()
    assert status_line.split()[1] == b"400", status_line

    served = [e for e in lines(log_stream) if e.get("logger") == "aiohttp.server"]
    assert [(e["level"], e["event"], e["http_status"], e["http_error"]) for e in served] == [
        ("warning", "api.bad_http_request", 400, "LineTooLong")]
    assert served[0]["http_client"] == "127.0.0.1"
    assert "exception" not in served[0]
    assert number not in log_stream.getvalue()


async def test_the_keepers_info_line_appears_at_info(desk: Desk,
                                                     log_stream: io.StringIO) -> None:
    record = make_call("repair-1", at=desk.clock.now - 3600)
    (call_id,) = await store(desk.db, desk.settings, record)
    response = await desk.client.patch(
        f"/api/v1/calls/{call_id}", json={"category": "repair"},
        headers={"Authorization": "Bearer supervisor-token-0001"})
    assert response.status == 200, await response.text()
    tick = await desk.keeper.tick()
    assert tick.created == 2
    (line,) = [e for e in lines(log_stream) if e["event"] == "followups.updated"]
    assert line["level"] == "info"
    assert (line["created"], line["closed"], line["overdue"]) == (2, 0, 0)


def logging_calls(tree: ast.AST) -> Iterator[tuple[int, ast.expr]]:
    """(line, first argument) of every `log.<level>(...)` call."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log" and node.args):
            yield node.lineno, node.args[0]


def test_every_event_name_in_callhub_is_area_dot_event() -> None:
    seen = 0
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, arg in logging_calls(ast.parse(path.read_text("utf-8"))):
            where = f"{path.relative_to(ROOT)}:{line}"
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                bad.append(f"{where}: the event name is not a string literal")
                continue
            seen += 1
            if not EVENT_NAME.match(arg.value):
                bad.append(f"{where}: {arg.value!r}")
    assert seen > 30, "the scan found too few log calls to mean anything"
    assert not bad, "\n".join(bad)


def test_callhub_logs_through_structlog_only() -> None:
    """No module but logs.py uses the standard `logging` module directly."""
    users = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "logging" or n.startswith("logging.") for n in names):
                users.append(str(path.relative_to(ROOT)))
    assert users == ["callhub/logs.py"]


async def test_an_event_the_correlator_cannot_apply_is_counted_by_kind_and_logged_once(
        ami_simulator: AmiSimulator) -> None:
    sim = ami_simulator
    registry = CollectorRegistry()
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim), collector, metrics=CallhubMetrics(registry))
    call = CallFactory(seed=3).make("answered", 1_795_900_000.0, number="+8613800000007",
                                    agent="Local/agent1@agentsim")
    # A Newchannel without its Uniqueid: the correlator skips it (KeyError) and goes on.
    broken = {"Event": "Newchannel", "Privilege": "call,all", "Channel": "PJSIP/x-0001",
              "Linkedid": "broken-1", "CallerIDNum": "+8613800000008"}
    await ingest.start()
    try:
        with capture_logs() as logs:
            await ingest.wait_connected(10)
            await sim.send([broken])
            await sim.send_call(call)
            await collector.until(lambda: len(collector.records) == 1)
    finally:
        await ingest.stop()
    assert collector.records[0].linkedid == call.linkedid  # the stream went on
    assert registry.get_sample_value("callhub_correlator_errors_total",
                                     {"pbx": "lab", "event": "Newchannel"}) == 1.0
    (logged,) = [e for e in logs if e["event"] == "correlator.event_failed"]
    assert (logged["event_kind"], logged["linkedid"], logged["error"]) == (
        "Newchannel", "broken-1", "KeyError")
    assert logged["log_level"] == "warning" and "8613800000008" not in repr(logged)


def test_what_orjson_cannot_encode_still_makes_one_json_line(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("callhub.test")
    log.info("test.odd", big=2**70, keyed={1: "一"}, other=object())
    log.info("test.plain", n=1)
    odd, plain = lines(log_stream)
    assert odd["big"] == 2**70 and odd["keyed"] == {"1": "一"}
    assert odd["other"].startswith("<object object")
    assert odd["level"] == "info" and plain["event"] == "test.plain"


def test_lines_from_threads_and_libraries_never_interleave(
        log_stream: io.StringIO, tmp_path: Path) -> None:
    """callhub's lines and library records share the handler's lock: every line is whole,
    also on a real file, whose writes let other threads run in between."""
    import sys
    import threading

    path = tmp_path / "callhub.log"
    switch = sys.getswitchinterval()
    with path.open("w", encoding="utf-8") as stream:
        configure_logging("info", stream=stream, json=True)
        log = structlog.get_logger("callhub.test")
        library = logging.getLogger("asyncpg.test")
        payload = "x" * 20000

        def ours(n: int) -> None:
            for i in range(200):
                log.warning("test.thread", n=n, i=i, payload=payload)

        def theirs() -> None:
            for i in range(200):
                library.warning("library %d %s", i, payload)

        threads = [threading.Thread(target=ours, args=(n,)) for n in range(3)]
        threads.append(threading.Thread(target=theirs))
        sys.setswitchinterval(1e-6)
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(switch)
    got = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert len(got) == 800
    assert sum(e["event"] == "test.thread" for e in got) == 600
