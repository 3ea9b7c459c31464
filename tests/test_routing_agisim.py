"""The simulator's AGI client mode: it asks callhub's FastAGI as Asterisk does, falls back
like the dialplan when callhub is down, and rings the returned agents in order with the
returned timeout as AMI events that the correlator reads back as the same attempts."""

from __future__ import annotations

import socket

import pytest
from ami_fixtures import Collector, make_ingest, sim_pbx
from routing_fixtures import HOTLINE_DID, AgiServer

from callhub.ami.correlator import Correlator
from callhub.config import PbxConfig
from callhub.records import CallRecord
from callhub.sim.agi_client import AgiAnswer, agi_request, asterisk_environment
from callhub.sim.ami_server import AmiSimulator
from callhub.sim.calls import CallFactory
from callhub.sim.hunt import Behaviour, hunt_template
from callhub.sim.routed_calls import AgiCallSimulator


async def test_agi_request_reads_the_answer(agi_server: AgiServer) -> None:
    env = asterisk_environment(did=HOTLINE_DID, caller="+8613800000011", caller_name="张三",
                               host=agi_server.host, port=agi_server.port)
    answer = await agi_request(agi_server.host, agi_server.port, env)
    assert answer.status == "SUCCESS" and answer.answered
    assert answer.targets == ["PJSIP/1001", "PJSIP/1002", "PJSIP/1003"]
    assert answer.ring_timeout == 12 and answer.fallback == "PJSIP/1000"
    assert answer.commands == ['EXEC MSet "CALLHUB_TARGETS=PJSIP/1001&PJSIP/1002&PJSIP/1003,'
                               'CALLHUB_TARGET_COUNT=3,CALLHUB_TARGET=PJSIP/1001,'
                               'CALLHUB_RING_TIMEOUT=12,CALLHUB_RING_TIMEOUTS=12&20&8,'
                               'CALLHUB_FALLBACK=PJSIP/1000,CALLHUB_LINE=hotline,'
                               'CALLHUB_ROUTE_RESULT=routed"']  # one command, one round trip


async def test_agi_request_to_nobody_fails_like_asterisk() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answer = await agi_request("127.0.0.1", port, asterisk_environment(did="1", caller="2"))
    assert answer.status == "FAILURE" and not answer.answered and answer.targets == []


def replay(call_messages: list[dict[str, str]], devices: list[str]) -> list[CallRecord]:
    pbx = PbxConfig(name="lab", inbound_contexts=("from-pstn",),
                    agents={d: d for d in devices})
    correlator = Correlator(pbx)
    records = []
    for message in call_messages:
        records += correlator.feed(message)
    return records + correlator.flush()


@pytest.mark.parametrize(("kind", "devices"), [
    ("pjsip", ["PJSIP/1001"]),
    ("pjsip", ["PJSIP/1003", "PJSIP/1001"]),
    ("pjsip", ["PJSIP/1002", "PJSIP/1003", "PJSIP/1001", "PJSIP/1000"]),
    ("local", ["Local/agent2@agentsim", "Local/agent3@agentsim", "Local/agent1@agentsim"]),
])
def test_hunt_rings_each_device_in_turn(kind: str, devices: list[str]) -> None:
    template, placeholders = hunt_template(len(devices), 12, Behaviour(True, 4.0, 25.0), kind)
    call = CallFactory(seed=3).make(
        "hunt", 1_800_000_000.0, template=template, number="+8613911112222",
        did="4008001004", caller_name="王芳",
        agents=dict(zip(placeholders, devices, strict=True)))
    [record] = replay(call.messages, devices)
    assert not record.incomplete and record.outcome == "answered"
    assert [(a.interface, a.result) for a in record.attempts] == (
        [(d, "no_answer") for d in devices[:-1]] + [(devices[-1], "answered")])
    for attempt in record.attempts[:-1]:
        assert attempt.ring_seconds == pytest.approx(12.0, abs=0.1)  # the ring timeout
    assert record.attempts[-1].ring_seconds == pytest.approx(4.0, abs=0.1)
    assert record.ring_seconds == pytest.approx(12.0 * (len(devices) - 1) + 4.0, abs=0.2)
    assert record.talk_seconds == pytest.approx(25.0, abs=0.2)
    assert record.called_number == "4008001004" and record.caller_number == "+8613911112222"
    assert record.caller_name == "王芳"
    assert record.arrived_at == pytest.approx(1_800_000_000.0, abs=0.01)


async def test_routed_calls_through_the_ami_simulator(
        agi_server: AgiServer, ami_simulator: AmiSimulator) -> None:
    devices = ["PJSIP/1000", "PJSIP/1001", "PJSIP/1002", "PJSIP/1003"]
    pbx = sim_pbx(ami_simulator, "p06_sip_hunt_rna_then_answer",
                  agents={d: d for d in devices})
    collector = Collector()
    ingest = make_ingest(pbx, collector)
    await ingest.start()
    try:
        await ingest.wait_connected()
        sim = AgiCallSimulator(ami_simulator, agi_server.host, agi_server.port, behaviour={
            "PJSIP/1001": Behaviour(answers=False), "PJSIP/1002": Behaviour(True, 2.0, 10.0),
            "PJSIP/1003": Behaviour(True, 3.0, 10.0)})
        t0 = 1_800_000_000.0
        routed = await sim.run([(t0, HOTLINE_DID, "+8613800000001"),
                                (t0 + 100, HOTLINE_DID, "+8613800000002"),
                                (t0 + 200, HOTLINE_DID, "+8613800000003")])
        await collector.until(lambda: len(collector.records) == 3)
    finally:
        await ingest.stop()
    by_id = {r.linkedid: r for r in collector.records}
    attempts = [[(a.interface, a.result) for a in by_id[c.call.linkedid].attempts]
                for c in routed]
    assert attempts == [
        [("PJSIP/1001", "no_answer"), ("PJSIP/1002", "answered")],  # ann rings out
        [("PJSIP/1002", "answered")],
        [("PJSIP/1003", "answered")],
    ]
    assert [c.first_offered for c in routed] == ["PJSIP/1001", "PJSIP/1002", "PJSIP/1003"]


async def test_callhub_down_dials_the_dialplan_default(ami_simulator: AmiSimulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pbx = sim_pbx(ami_simulator, "p06_sip_hunt_rna_then_answer",
                  agents={"PJSIP/1001": "Li Na"})
    collector = Collector()
    ingest = make_ingest(pbx, collector)
    await ingest.start()
    try:
        await ingest.wait_connected()
        sim = AgiCallSimulator(ami_simulator, "127.0.0.1", port, default_target="PJSIP/1001")
        [routed] = await sim.run([(1_800_000_000.0, HOTLINE_DID, "+8613800000012")])
        await collector.until(lambda: len(collector.records) == 1)
    finally:
        await ingest.stop()
    assert routed.answer.status == "FAILURE"
    [record] = collector.records
    assert record.outcome == "answered" and record.agent == "PJSIP/1001"


def test_agi_variables_show_as_varset_events() -> None:
    variables = [("CALLHUB_TARGETS", "PJSIP/1001&PJSIP/1002"), ("CALLHUB_TARGET_COUNT", "2"),
                 ("CALLHUB_ROUTE_RESULT", "routed")]
    template, placeholders = hunt_template(2, 12, Behaviour(), "pjsip", variables)
    call = CallFactory(seed=1).make("hunt", 1_800_000_000.0, template=template,
                                    agents={placeholders[0]: "PJSIP/1001",
                                            placeholders[1]: "PJSIP/1002"})
    varsets = {m["Variable"]: m for m in call.messages if m["Event"] == "VarSet"
               and m["Variable"].startswith("CALLHUB_")}
    assert {k: m["Value"] for k, m in varsets.items()} == dict(variables)
    inbound = varsets["CALLHUB_ROUTE_RESULT"]
    assert inbound["Channel"].startswith("PJSIP/trunk-")
    assert inbound["Linkedid"] == call.linkedid


async def test_each_agent_rings_for_its_own_timeout(
        agi_server: AgiServer, ami_simulator: AmiSimulator) -> None:
    """Nobody picks up: ann rings the line's 12 s, ben his own 20 s, cai the line's 8 s for
    cai, then the fallback (the line's 12 s) answers; the records show those ring times."""
    devices = ["PJSIP/1000", "PJSIP/1001", "PJSIP/1002", "PJSIP/1003"]
    pbx = sim_pbx(ami_simulator, "p06_sip_hunt_rna_then_answer",
                  agents={d: d for d in devices})
    collector = Collector()
    ingest = make_ingest(pbx, collector)
    await ingest.start()
    try:
        await ingest.wait_connected()
        nobody = Behaviour(answers=False)
        sim = AgiCallSimulator(ami_simulator, agi_server.host, agi_server.port, behaviour={
            "PJSIP/1001": nobody, "PJSIP/1002": nobody, "PJSIP/1003": nobody,
            "PJSIP/1000": Behaviour(True, 5.0, 30.0)})
        t0 = 1_800_000_000.0
        routed = await sim.run([(t0, HOTLINE_DID, "+8613800000001"),
                                (t0 + 300, HOTLINE_DID, "+8613800000002")])
        await collector.until(lambda: len(collector.records) == 2)
    finally:
        await ingest.stop()
    by_id = {r.linkedid: r for r in collector.records}
    seconds = {"PJSIP/1001": 12.0, "PJSIP/1002": 20.0, "PJSIP/1003": 8.0}
    for call, first in zip(routed, ("PJSIP/1001", "PJSIP/1002"), strict=True):
        assert call.answer.variables["CALLHUB_TARGETS"].startswith(first)
        record = by_id[call.call.linkedid]
        assert record.outcome == "answered" and record.agent == "PJSIP/1000"
        *rang_out, fallback = record.attempts
        assert [a.interface for a in rang_out] == call.answer.targets
        for attempt in rang_out:
            assert attempt.result == "no_answer"
            assert attempt.ring_seconds == pytest.approx(seconds[attempt.interface], abs=0.1)
        assert fallback.ring_seconds == pytest.approx(5.0, abs=0.1)
        # each Dial() asks for the agent's own timeout, as the dialplan's would
        dials = [m["AppData"] for m in call.call.messages
                 if m.get("Event") == "Newexten" and m.get("Application") == "Dial"]
        assert dials == [f"{a.interface},{int(seconds[a.interface])}" for a in rang_out] + [
            "PJSIP/1000,12"]


def test_ring_timeouts_as_the_dialplan_reads_them() -> None:
    answer = AgiAnswer("SUCCESS", {"CALLHUB_TARGETS": "PJSIP/1&PJSIP/2&PJSIP/3",
                                   "CALLHUB_RING_TIMEOUT": "15",
                                   "CALLHUB_RING_TIMEOUTS": "9&&30"})
    assert answer.ring_timeouts(20) == [9, 15, 30]  # an empty entry: the line's
    older = AgiAnswer("SUCCESS", {"CALLHUB_TARGETS": "PJSIP/1&PJSIP/2",
                                  "CALLHUB_RING_TIMEOUT": "15"})
    assert older.ring_timeouts(20) == [15, 15]  # a callhub without per-agent timeouts
    assert AgiAnswer("SUCCESS", {"CALLHUB_TARGETS": "PJSIP/1"}).ring_timeouts(20) == [20]
