"""`callhub simulate --agi` as a real process: its inbound calls ask callhub's FastAGI (a real
server on loopback, the sample rota) as Asterisk would, and the hunts it emits on its AMI port
read back, through callhub's own AMI client, as records that follow the rota: the rotation,
each agent ringing for its own timeout, then the fallback."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest
from ami_fixtures import SIM_SECRET, Collector, make_ingest, sim_pbx
from routing_fixtures import HOTLINE_DID, AgiServer, samples

from callhub.sim.ami_server import AmiSimulator
from callhub.sim.cli import agi_arrivals

CALLS = 12
ROTATION = ["PJSIP/1001", "PJSIP/1002", "PJSIP/1003"]  # ann, ben, cai on Monday 10:00
RING = {"PJSIP/1001": 12.0, "PJSIP/1002": 20.0, "PJSIP/1003": 8.0, "PJSIP/1000": 12.0}


async def test_simulate_agi_mode_routes_by_the_rota(agi_server: AgiServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "callhub", "simulate", "--listen", "127.0.0.1:0",
        "--secret", SIM_SECRET, "--agi", f"{agi_server.host}:{agi_server.port}",
        "--dids", f"{HOTLINE_DID},4008001005", "--agi-rate", "6", "--max-calls", str(CALLS),
        "--seed", "7", "--speed", "0", "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    collector = Collector()
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        pbx = sim_pbx(AmiSimulator(port=port), "p06_sip_hunt_rna_then_answer",
                      agents={d: d for d in RING})
        ingest = make_ingest(pbx, collector)
        await ingest.start()
        try:
            await ingest.wait_connected(10)  # the simulator's calls start at this login
            await collector.until(lambda: len(collector.records) >= CALLS, within=30)
        finally:
            await ingest.stop()
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()

    records = sorted(collector.records, key=lambda r: r.arrived_at)
    assert len(records) == CALLS and len({r.linkedid for r in records}) == CALLS
    assert {r.called_number for r in records} <= {HOTLINE_DID, "4008001005"}
    for i, record in enumerate(records):
        assert record.outcome == "answered" and not record.incomplete
        # offered in rotation order from the next agent on, then the fallback
        order = ROTATION[i % 3:] + ROTATION[:i % 3] + ["PJSIP/1000"]
        interfaces = [a.interface for a in record.attempts]
        assert interfaces == order[:len(interfaces)], (i, interfaces)
        *rang_out, answered = record.attempts
        assert answered.result == "answered" and record.agent == answered.interface
        assert answered.ring_seconds < RING[answered.interface]
        for attempt in rang_out:  # each for its own time
            assert attempt.result == "no_answer"
            assert attempt.ring_seconds == pytest.approx(RING[attempt.interface], abs=0.1)
    rang_out_agents = {a.interface for r in records for a in r.attempts if a.result == "no_answer"}
    assert rang_out_agents == set(ROTATION)  # (seed 7) each agent's own timeout was seen
    counted = samples(agi_server.metrics, "callhub_route_requests_total")
    assert counted == {(("line", "hotline"), ("result", "routed")): float(CALLS)}


def test_arrivals_are_a_time_ordered_poisson_stream() -> None:
    import random

    stream = agi_arrivals(60.0, ["1", "2"], random.Random(1), 1000.0)
    first = [next(stream) for _ in range(2000)]  # endless without max_calls
    times = [at for at, _, _ in first]
    assert times[0] == 1000.0 and times == sorted(times)
    mean_gap = (times[-1] - times[0]) / (len(times) - 1)
    assert mean_gap == pytest.approx(1.0, rel=0.1)  # 60 a minute
    assert {did for _, did, _ in first} == {"1", "2"}
    assert len(list(agi_arrivals(6.0, ["1"], random.Random(1), 0.0, max_calls=5))) == 5


def test_bad_agi_address_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    from callhub.cli import main

    assert main(["simulate", "--agi", "localhost"]) == 2
    assert "--agi: expected 'host:port', got 'localhost'" in capsys.readouterr().err
