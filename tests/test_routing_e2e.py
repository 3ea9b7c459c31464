"""A simulated day of 500 inbound calls: simulator -> FastAGI -> AMI -> correlator -> records.

Every call asks callhub's FastAGI over TCP when it arrives (the router's clock follows the
simulated day); the simulator rings the returned agents in order with the returned timeout
and emits the hunt as AMI events; callhub reads them over TCP into call records, and feeds
its busy view from the same stream. Time is compressed: the day runs in seconds.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from ami_fixtures import Collector, make_ingest, sim_pbx

from callhub.config import Settings
from callhub.routing.busy import BusyTracker
from callhub.routing.chooser import Router
from callhub.routing.fastagi import start_fastagi
from callhub.routing.metrics import RoutingMetrics
from callhub.routing.rota_file import load_rota
from callhub.routing.state import POSITION_FILE, RotationState
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.hunt import Behaviour
from callhub.sim.routed_calls import AgiCallSimulator

DID = "4008001004"
SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY_ROTA = """\
timezone = "Asia/Shanghai"

[[agents]]
id = "a"
interface = "PJSIP/1001"
[[agents]]
id = "b"
interface = "PJSIP/1002"
[[agents]]
id = "c"
interface = "PJSIP/1003"
[[agents]]
id = "d"
interface = "PJSIP/1004"
[[agents]]
id = "e"
interface = "PJSIP/1005"
[[agents]]
id = "trainee"
interface = "PJSIP/1006"
cleared = false
[[agents]]
id = "gone"
interface = "PJSIP/1007"
active = false
[[agents]]
id = "leader"
interface = "PJSIP/1000"

[[lines]]
name = "hotline"
dids = ["4008001004"]
rotation = ["a", "b", "c", "d", "e", "trainee", "gone"]
ring_timeout = 12
fallback = "PJSIP/1000"

[[lines.shifts]]
name = "early"
days = ["daily"]
start = "00:00"
end = "12:00"
agents = ["a", "b", "c", "trainee", "gone"]

[[lines.shifts]]
name = "late"
days = ["daily"]
start = "12:00"
end = "24:00"
agents = ["c", "d", "e", "trainee", "gone"]
"""
CLEARED_ON_DUTY = {
    "early": {"PJSIP/1001", "PJSIP/1002", "PJSIP/1003"},
    "late": {"PJSIP/1003", "PJSIP/1004", "PJSIP/1005"},
}
# 2026-12-01 00:00 Asia/Shanghai
DAY_START = datetime(2026, 11, 30, 16, 0, tzinfo=UTC).timestamp()
CALLS = 500


async def test_simulated_day_of_500_calls(tmp_path: Path, ami_simulator: AmiSimulator) -> None:
    rota_path = tmp_path / "day.toml"
    rota_path.write_text(DAY_ROTA, encoding="utf-8")
    sim_now = [DAY_START]
    busy = BusyTracker()
    router = Router(load_rota(rota_path), RotationState(tmp_path / POSITION_FILE),
                    busy=busy.busy_interfaces,
                    clock=lambda: datetime.fromtimestamp(sim_now[0], UTC))
    metrics = RoutingMetrics(router=router)
    server = await start_fastagi(Settings(), router, metrics, host="127.0.0.1", port=0)
    host, port = server.sockets[0].getsockname()[:2]

    devices = [f"PJSIP/100{i}" for i in range(8)]
    pbx = sim_pbx(ami_simulator, "p06_sip_hunt_rna_then_answer",
                  agents={d: d for d in devices})
    collector = Collector()
    ingest = make_ingest(pbx, collector)
    ingest.add_listener(busy.feed)
    busy.add_source(ingest.correlator.busy_interfaces)

    rng = random.Random(20261201)
    behaviour = {d: Behaviour(True, rng.uniform(1.5, 8.0), rng.uniform(20.0, 90.0))
                 for d in devices}
    behaviour["PJSIP/1002"] = Behaviour(answers=False)  # b never picks up: rings out
    # 500 arrivals over the day, about 3 minutes apart; every 25th call comes with a twin
    # arriving in the same second (two simultaneous calls).
    arrivals = []
    gap = 86400.0 / CALLS
    for i in range(CALLS - CALLS // 25):
        at = DAY_START + i * gap * (CALLS / (CALLS - CALLS // 25)) + rng.uniform(0, 20)
        arrivals.append((at, DID, f"+86138{rng.randrange(10**8):08d}"))
        if i % 24 == 23:
            arrivals.append((at + 0.2, DID, f"+86139{rng.randrange(10**8):08d}"))
    assert len(arrivals) == CALLS

    async def at_arrival(at: float) -> None:
        # What callhub has read is what it knows: wait for the events already sent.
        await collector.until(lambda: len(collector.events) >= ami_simulator.events_sent)
        sim_now[0] = at

    await ingest.start()
    try:
        await ingest.wait_connected()
        # What routing decides is checked here, not how fast: a stalled test machine
        # (3 s once) must not turn an answer into the dialplan's fallback.
        sim = AgiCallSimulator(ami_simulator, host, port, behaviour=behaviour,
                               agi_timeout=60.0)
        routed = await sim.run(arrivals, on_arrival=at_arrival)
        await collector.until(lambda: len(collector.records) >= CALLS, within=60)
    finally:
        await ingest.stop()
        server.close()
        await server.wait_closed()

    records = {r.linkedid: r for r in collector.records}
    assert len(records) == CALLS
    assert all(c.answer.answered for c in routed)
    offered: dict[str, Counter[str]] = {"early": Counter(), "late": Counter()}
    for call in routed:
        record = records[call.call.linkedid]
        assert record.outcome == "answered" and not record.incomplete
        # the records show exactly the hunt FastAGI asked for
        assert [a.interface for a in record.attempts] == call.rung
        assert call.rung == [*call.answer.targets, call.answer.fallback or ""][:len(call.rung)]
        assert "PJSIP/1006" not in call.rung and "PJSIP/1007" not in call.rung
        for attempt in record.attempts[:-1]:
            assert attempt.result == "no_answer" and abs(attempt.ring_seconds - 12.0) < 0.5
        local_hour = datetime.fromtimestamp(call.arrived_at, SHANGHAI).hour
        shift = "early" if local_hour < 12 else "late"
        assert set(call.answer.targets) <= CLEARED_ON_DUTY[shift]
        offered[shift][record.attempts[0].interface] += 1

    for shift, counts in offered.items():
        assert set(counts) == CLEARED_ON_DUTY[shift], (shift, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (shift, counts)
    # twins: the two calls of a pair were offered to different agents first
    by_time = sorted(routed, key=lambda c: c.arrived_at)
    twins = [(a, b) for a, b in itertools.pairwise(by_time)
             if b.arrived_at - a.arrived_at < 1.0]
    assert len(twins) == CALLS // 25
    assert all(a.first_offered != b.first_offered for a, b in twins)
    # b rings out every time it is first; the next agent then answers
    assert all(r.agent != "PJSIP/1002" for r in records.values())
    routed_count = sum(s.value for f in metrics.registry.collect() for s in f.samples
                       if s.name == "callhub_route_requests_total")
    assert routed_count == CALLS
