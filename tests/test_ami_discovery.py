"""Devices known without hand configuration: at login callhub asks the PBX for its
endpoints (PJSIPShowEndpoints / PJSIPShowEndpoint, SIPpeers / SIPshowpeer) and queue
members (QueueStatus), over real TCP against the AMI simulator."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ami_fixtures import Collector, make_ingest, sim_pbx
from test_correlator_local import (
    L1001,
    L1002,
    PHONE1,
    PHONE2,
    queue_with_local_members,
    r01,
    without_phone,
)

from callhub.ami.discovery import callerid_name
from callhub.ami.ingest import PbxIngest
from callhub.records import CallRecord
from callhub.sim.ami_server import AmiSimulator, QueueMember

# A FreePBX-style queue whose Local members reach their phones by a way AMI does not
# show, and no QueueMemberStatus: only QueueStatus can tell which phone each one is.
MEMBERS = [QueueMember("fpbx", "Local/1001@from-queue/n", "1001", "PJSIP/1001"),
           QueueMember("fpbx", "Local/1002@from-queue/n", "1002", "PJSIP/1002")]


def phoneless_queue_call() -> list[dict[str, str]]:
    phoneless = without_phone(without_phone(r01(member_status=False), L1001, PHONE1),
                              L1002, PHONE2)
    return queue_with_local_members(phoneless, member_status=False)


async def one_call(sim: AmiSimulator, ingest: PbxIngest, collector: Collector) -> CallRecord:
    await ingest.start()
    try:
        await ingest.wait_connected(5)
        await sim.send(phoneless_queue_call())
        await collector.until(lambda: len(collector.records) >= 1)
    finally:
        await ingest.stop()
    (record,) = collector.records
    return record


async def test_agent_names_and_local_members_come_from_the_pbx(
        ami_simulator: AmiSimulator) -> None:
    sim = ami_simulator
    sim.endpoints = {"1001": '"Li Na" <1001>', "1002": '"王伟" <1002>', "trunk": ""}
    sim.sip_peers = {"1003": '"Zhao Lei" <1003>'}
    sim.queue_members = MEMBERS
    # [pbx.agents] names 1001 only: it wins; 1002's name is the PBX's.
    pbx = replace(sim_pbx(sim, "r01_sip_ringgroup_local_members"),
                  agents={"PJSIP/1001": "Agent One"})
    collector = Collector()
    ingest = make_ingest(pbx, collector)
    record = await one_call(sim, ingest, collector)
    assert [(a.interface, a.result, a.agent_name) for a in record.attempts] == [
        ("PJSIP/1001", "cancelled", "Agent One"), ("PJSIP/1002", "answered", "王伟")]
    assert (record.agent, record.agent_name) == ("PJSIP/1002", "王伟")
    assert ingest.correlator.device_names == {
        "PJSIP/1001": "Li Na", "PJSIP/1002": "王伟", "SIP/1003": "Zhao Lei"}
    asked = sim.stats.actions
    assert asked.index("queuestatus") < asked.index("coreshowchannels")
    assert {"pjsipshowendpoints", "pjsipshowendpoint", "sippeers", "sipshowpeer"} <= set(asked)


async def test_a_pbx_that_refuses_the_listings_still_connects(
        ami_simulator: AmiSimulator) -> None:
    """No chan_sip ("Invalid/unknown command") and a manager user without the `system`
    class ("Permission denied" for PJSIPShowEndpoints): the session comes up, names
    are the configured ones, and QueueStatus (no class needed) still maps members."""
    sim = ami_simulator
    sim.endpoints = {"1002": '"王伟" <1002>'}
    sim.denied = {"pjsipshowendpoints"}
    sim.queue_members = MEMBERS
    collector = Collector()
    ingest = make_ingest(sim_pbx(sim, "r01_sip_ringgroup_local_members"), collector)
    record = await one_call(sim, ingest, collector)
    assert [(a.interface, a.result) for a in record.attempts] == [
        ("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]
    assert record.agent_name == ingest.pbx.agents["PJSIP/1002"]
    assert ingest.correlator.device_names == {}
    assert "pjsipshowendpoint" not in sim.stats.actions


async def test_without_queue_status_the_local_members_stay_unknown(
        ami_simulator: AmiSimulator) -> None:
    """The control case: the same call with no members listed has no attempts."""
    collector = Collector()
    ingest = make_ingest(sim_pbx(ami_simulator, "r01_sip_ringgroup_local_members"),
                         collector)
    record = await one_call(ami_simulator, ingest, collector)
    assert record.attempts == [] and record.agent is None


@pytest.mark.parametrize(("callerid", "name"), [
    ('"Li Na" <1001>', "Li Na"), ("Li Na <1001>", "Li Na"), ('"王伟" <1002>', "王伟"),
    ("<1001>", None), ('"" <1001>', None), ("", None), (None, None), ("Reception", "Reception"),
])
def test_callerid_name(callerid: str | None, name: str | None) -> None:
    assert callerid_name(callerid) == name
