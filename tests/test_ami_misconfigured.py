"""What a PBX admin meets when callhub's AMI settings are wrong, over real loopback TCP.

Each case must say itself in one line naming the PBX and what to check, in the reason
of the part `ami/<pbx>` of /readyz, and be retried with backoff (a setting mended in
manager.conf, or a PBX coming up, needs no restart of callhub).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import structlog
from ami_fixtures import SIM_SECRET, SIM_USER, sim_pbx

from callhub.ami.connection import AmiConnection
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
