"""Busy, as routing reads it: a device with a channel up in a call (answered, or a phone
dialling out). A phone that only rings is not busy, nor is the caller's trunk; call
waiting rings a phone that is busy elsewhere and is an ordinary attempt (DESIGN.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from traces_fixtures import (
    about,
    all_traces,
    first,
    merged_by_time,
    shifted,
    stamped,
    trace_messages,
    trace_pbx,
)

from callhub.ami.correlator import Correlator, interface_of
from callhub.ami.parser import AmiMessage
from callhub.ami.replay import replay_messages
from callhub.records import CallRecord
from callhub.routing.busy import BusyTracker

RINGING = ("Newstate", "DialState")


def records(messages: list[AmiMessage], correlator: Correlator) -> dict[str, CallRecord]:
    return {r.linkedid: r for m in messages for r in correlator.feed(m)}


def ringing_channel(m: AmiMessage) -> str | None:
    """The channel an event says started ringing, if it says one did."""
    if m.get("Event") == "Newstate" and m.get("ChannelStateDesc") == "Ringing":
        return m["Channel"]
    if m.get("Event") == "DialState" and m.get("DialStatus") == "RINGING":
        return m.get("DestChannel")
    return None


@pytest.mark.parametrize("path", all_traces(), ids=lambda p: p.stem)
def test_in_every_trace_ringing_is_not_busy_and_talking_is(path: Path) -> None:
    """Event by event: a phone that starts ringing is not busy (unless another channel of
    it is up, as the events themselves say), the inbound caller's side never is, the agent
    who answered is once bridged, and nothing is busy after the trace."""
    pbx = trace_pbx(path.stem)
    messages = stamped(trace_messages(path.stem))
    done = {r.linkedid: r for r in replay_messages(messages, pbx)}
    callers = {m["Linkedid"]: interface_of(m["Channel"]) for m in messages
               if m.get("Event") == "Newchannel" and m["Uniqueid"] == m["Linkedid"]
               and done.get(m["Linkedid"]) is not None
               and done[m["Linkedid"]].direction == "inbound"}
    agents = {r.agent for r in done.values() if r.direction == "inbound" and r.agent}
    states: dict[str, tuple[str, str]] = {}  # uniqueid -> (interface, state), from the events
    correlator = Correlator(pbx)
    for m in messages:
        correlator.feed(m)
        event, uniqueid = m.get("Event"), m.get("Uniqueid", "")
        if event in ("Newchannel", "Newstate"):
            states[uniqueid] = (interface_of(m["Channel"]), m["ChannelStateDesc"])
        elif event == "Hangup":
            states.pop(uniqueid, None)
        busy = correlator.busy_interfaces()
        assert not busy & set(callers.values())
        channel = ringing_channel(m)
        if channel is not None:
            phone = interface_of(channel)
            up_elsewhere = any(i == phone and s == "Up" for i, s in states.values())
            assert phone not in busy or up_elsewhere
        if event == "BridgeEnter" and interface_of(m["Channel"]) in agents:
            assert interface_of(m["Channel"]) in busy
    assert correlator.busy_interfaces() == set() and correlator.active_calls == 0


def test_call_waiting_rings_a_talking_phone_as_an_ordinary_attempt() -> None:
    """p01 (1001 answers and talks 6 s) with q05 (a call ringing 1001 until 1002 picks it
    up) shifted to ring 1001 two seconds into that talk: 1001 is busy for its first call,
    still rings for the second and is cancelled there by the pickup, as without the first;
    once the first call ends, the phone that still rings is not busy any more."""
    pbx = trace_pbx("q05_sip_pickup")
    talking = stamped(trace_messages("p01_sip_direct_utf8_caller_hangup"))
    waiting = stamped(trace_messages("q05_sip_pickup"))
    bridged = float(talking[first(talking, "BridgeEnter", "PJSIP/1001")]["Timestamp"])
    ring = waiting[first(waiting, "DialState", "PJSIP/1001")]
    waiting = shifted(waiting, bridged + 2.0 - float(ring["Timestamp"]))
    alone = {**records(talking, Correlator(pbx)), **records(waiting, Correlator(pbx))}

    stream = merged_by_time(talking, waiting)
    correlator = Correlator(pbx)
    together: dict[str, CallRecord] = {}
    rings_at = first(stream, "DialState", "PJSIP/1001-0000003c")
    first_linkedid = talking[first(talking, "Newchannel")]["Linkedid"]
    first_call_ends = max(i for i, m in enumerate(stream) if m.get("Event") == "Hangup"
                          and m["Linkedid"] == first_linkedid)
    picked_up = first(stream, "Pickup")
    assert rings_at < first_call_ends < picked_up
    for i, m in enumerate(stream):
        together.update((r.linkedid, r) for r in correlator.feed(m))
        if i == rings_at:
            assert "PJSIP/1001" in correlator.busy_interfaces()  # talking on the first call
        if i == first_call_ends:
            assert "PJSIP/1001" not in correlator.busy_interfaces()  # only ringing now
    assert {k: r.to_dict() for k, r in together.items()} == \
        {k: r.to_dict() for k, r in alone.items()}
    second = together[waiting[first(waiting, "Newchannel")]["Linkedid"]]
    assert [(a.interface, a.result) for a in second.attempts] == \
        [("PJSIP/1001", "cancelled"), ("PJSIP/1002", "answered")]


def test_a_pickup_leaves_the_picker_busy_only_while_it_talks() -> None:
    messages = stamped(trace_messages("q05_sip_pickup"))
    correlator = Correlator(trace_pbx("q05_sip_pickup"))
    picker_dials = first(messages, "Newchannel", "PJSIP/1002")
    picked_up = first(messages, "Pickup")
    for i, m in enumerate(messages):
        correlator.feed(m)
        if i == picker_dials:
            # 1002 is off-hook dialling *81001; 1001 rings: the one is busy, not the other
            assert correlator.busy_interfaces() == {"PJSIP/1002"}
        if i == picked_up:
            assert correlator.active_calls == 1  # the picker's own Linkedid is merged in
            assert correlator.busy_interfaces() == {"PJSIP/1002"}
    assert correlator.active_calls == 0 and correlator.busy_interfaces() == set()


@pytest.mark.parametrize("name, phone", [("01_answered_caller_hangup", "Local/agent1@agentsim"),
                                         ("p01_sip_direct_utf8_caller_hangup", "PJSIP/1001")])
def test_the_busy_tracker_does_not_take_a_ringing_phone_for_busy(name: str, phone: str) -> None:
    """Routing's view (device states plus the correlator) over a whole trace: a Local
    agent's device state says INUSE from its first ring (Asterisk counts any Local
    channel), so it is not read; a PJSIP phone's RINGING/INUSE are."""
    messages = stamped(trace_messages(name))
    correlator = Correlator(trace_pbx(name))
    tracker = BusyTracker([correlator.busy_interfaces])
    rings = first(messages, "Newstate", phone)
    answered = next(i for i, m in enumerate(messages) if m.get("Event") == "Newstate"
                    and about(m, phone) and m["ChannelStateDesc"] == "Up")
    device_states = [m for m in messages[rings:answered]
                     if m.get("Event") == "DeviceStateChange" and m["Device"] == phone]
    assert device_states  # the trace reports the phone's state while it rings
    for i, m in enumerate(messages):
        correlator.feed(m)
        tracker.feed(m)
        if rings <= i < answered:
            assert not tracker.is_busy(phone)
        if i == answered:
            assert tracker.is_busy(phone)
