"""What a PBX admin meets when callhub's AMI settings are wrong, over real loopback TCP.

Each case must say itself in one line naming the PBX and what to check, in the reason
of the part `ami/<pbx>` of /readyz, and be retried with backoff (a setting mended in
manager.conf, or a PBX coming up, needs no restart of callhub).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from ami_fixtures import SIM_SECRET, SIM_USER, sim_pbx

from callhub.ami.connection import AmiConnection
from callhub.ami.ingest import PbxIngest
from callhub.config import PbxConfig
from callhub.sim.ami_server import AmiSimulator


@contextlib.contextmanager
def port_that_drops_syns() -> Iterator[int]:
    """A port on which a connect is never answered, as at a host behind a firewall that
    drops the packets: a listener that accepts nothing, its queue filled (Linux drops
    the SYNs a full accept queue cannot take)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def failing(connection: AmiConnection, tries: int) -> list[dict[str, Any]]:
    """Run `connection` until `tries` attempts have failed; its log lines."""
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(connection.run())
        try:
            await connection.wait_failures(tries, within=20)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return logs


def pbx_at(port: int) -> PbxConfig:
    """The lab PBX's settings with its AMI at 127.0.0.1:port."""
    return sim_pbx(AmiSimulator(port=port, username=SIM_USER, secret=SIM_SECRET))


async def test_a_host_that_never_answers_the_connect_is_named_with_its_address() -> None:
    """A wrong host, or one behind a firewall that drops the packets: the line and the
    reason say that no TCP connection came to host:port, not a bare 'TimeoutError'."""
    with port_that_drops_syns() as port:
        connection = AmiConnection(pbx_at(port), lambda event: None,
                                   request_timeout=0.3, backoff_base=0.01, backoff_max=0.02)
        logs = await failing(connection, 2)
    failed = [e for e in logs if e["event"] == "ami.connection_failed"]
    said = f"no TCP connection to 127.0.0.1:{port} within 0.3 s"
    assert failed[0]["log_level"] == "warning" and failed[0]["pbx"] == "lab"
    assert said in failed[0]["error"]
    assert connection.last_error is not None and said in connection.last_error
    assert [e["log_level"] for e in failed[1:]] == ["debug"] * (len(failed) - 1)


@contextlib.asynccontextmanager
async def peer(greeting: bytes, answer: bytes | None) -> AsyncIterator[int]:
    """A TCP server that is not AMI: it sends `greeting` on connect, then `answer` to the
    first bytes it reads and closes (None: it reads on and never answers)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(greeting)
            while await reader.read(4096):
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize(("greeting", "answer", "said"), [
    (b"", HTTP_400, "'HTTP/1.1 400 Bad Request'"),  # Asterisk's HTTP port (8088)
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", None, "'SSH-2.0-OpenSSH_9.2p1 Debian-2'"),
])
async def test_a_port_that_is_not_ami_is_named_as_such_at_error_not_counted_malformed(
        greeting: bytes, answer: bytes | None, said: str) -> None:
    """A [[pbx]] port that is some other server: one error line that says so, with what
    it said and what to check, retried with backoff; its lines are not AMI messages
    (they were counted as malformed, and warned of, at every retry)."""
    malformed: list[int] = []
    async with peer(greeting, answer) as port:
        connection = AmiConnection(pbx_at(port), lambda event: None,
                                   on_malformed=malformed.append, request_timeout=2,
                                   backoff_base=0.01, backoff_max=0.04)
        logs = await failing(connection, 4)
    failed = [e for e in logs if e["event"] == "ami.connection_failed"]
    assert [e["log_level"] for e in failed] == ["error"] + ["debug"] * (len(failed) - 1)
    assert failed[0]["pbx"] == "lab"
    assert failed[0]["error"] == f"127.0.0.1:{port} is not Asterisk's AMI: it said {said}"
    assert "check host and port" in failed[0]["hint"]
    assert connection.last_error == failed[0]["error"]
    assert malformed == []
    assert not [e for e in logs if e["event"] == "ami.malformed_message"]
    assert connection.retry_delays[3] > connection.retry_delays[0]


async def test_a_peer_that_takes_the_connection_and_says_nothing_is_said_so() -> None:
    """Asterisk answering the TCP connection but never greeting (hung), or a port whose
    server waits for its client: the line and the reason say nothing came at all."""
    async with peer(b"", None) as port:
        connection = AmiConnection(pbx_at(port), lambda event: None, request_timeout=0.3,
                                   backoff_base=0.01, backoff_max=0.02)
        logs = await failing(connection, 2)
    failed = [e for e in logs if e["event"] == "ami.connection_failed"]
    assert failed[0]["log_level"] == "warning"
    assert failed[0]["error"].startswith(
        f"127.0.0.1:{port} took the connection but sent nothing within 0.3 s")
    assert connection.last_error is not None and "no AMI greeting" in connection.last_error


async def test_a_user_whose_write_lacks_reporting_is_told_what_to_set(
        ami_simulator: AmiSimulator) -> None:
    """A user that logs in but may not run CoreShowChannels (`write =` without
    `reporting` or `system`): callhub cannot tell the calls in progress, so it does not
    count the session as up; it says so at error with what to set, in /readyz too, and
    retries with backoff, so that `manager reload` mends it without a restart."""
    sim = ami_simulator
    sim.denied = {"coreshowchannels"}
    ingest = PbxIngest(sim_pbx(sim), lambda record: None, backoff_base=0.01,
                       backoff_max=0.04)
    with structlog.testing.capture_logs() as logs:
        await ingest.start()
        try:
            await ingest.connection.wait_failures(4, within=10)
            [part] = [s for s in await ingest.supervisor.states() if s.name == "ami/lab"]
            sim.denied = set()  # manager.conf mended, `manager reload`
            await ingest.wait_connected(5)
        finally:
            await ingest.stop()
    failed = [e for e in logs if e["event"] == "ami.connection_failed"]
    assert [e["log_level"] for e in failed] == ["error"] + ["debug"] * (len(failed) - 1)
    assert failed[0]["pbx"] == "lab"
    assert failed[0]["error"] == "CoreShowChannels refused: Permission denied"
    assert "`write = reporting`" in failed[0]["hint"]
    assert not part.ready
    assert part.reason == "AMI not connected (CoreShowChannels refused: Permission denied)"
    assert ingest.connection.retry_delays[3] > ingest.connection.retry_delays[0]
    connected = [e for e in logs if e["event"] == "ami.connected"]
    assert [e["failed_tries"] for e in connected] == [len(failed)]


async def test_a_refused_login_points_at_the_secret_and_at_permit(
        ami_simulator: AmiSimulator) -> None:
    """Asterisk answers "Authentication failed" alike to a wrong secret and to a host its
    `permit =` does not let in (a second host of a pair, callhub in a container): the hint
    names both, and the reason on /readyz says the login was refused."""
    ingest = PbxIngest(sim_pbx(ami_simulator, secret="not-the-secret"), lambda record: None,
                       backoff_base=0.01, backoff_max=0.02)
    with structlog.testing.capture_logs() as logs:
        await ingest.start()
        try:
            await ingest.connection.wait_failures(2, within=10)
            [part] = [s for s in await ingest.supervisor.states() if s.name == "ami/lab"]
        finally:
            await ingest.stop()
    failed = [e for e in logs if e["event"] == "ami.login_failed"]
    assert failed[0]["log_level"] == "error" and failed[0]["pbx"] == "lab"
    assert "username and secret" in failed[0]["hint"] and "permit=" in failed[0]["hint"]
    assert part.reason == ("AMI not connected (login as 'callhub' refused: "
                           "Authentication failed)")
