"""A channel that joins an older call: Asterisk gives every channel of a bridge the oldest
Linkedid among them, so a channel created under a Linkedid of its own carries the older
call's once bridged with it (README of the traces, q05). A SIP phone's attended transfer
(REFER with Replaces) bridges the agent it consulted with the caller; a phone retrieving a
parked call is bridged with the parked caller. The call is the older Linkedid's: nothing
of the channel may stay open elsewhere, the agent is busy while talking and free after,
and who hung up first is told as for any agent (DESIGN.md: hangup_by; an attended
transfer's consult call to an agent is an attempt; transfers name interfaces).

No trace records these; the cases are made of recorded SIP events: the caller's call is
p01 (trunk -> PJSIP/1001, answered, talking) and the consult call p09 (1001's phone
dialling out, answered), its called side renamed the phone of agent 1002. The events at
the transfer are copies of recorded ones moved in time, with the Linkedid Asterisk gives
them; the AttendedTransfer event is made of the channels' own snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass

from traces_fixtures import (
    like,
    merged_by_time,
    rewritten,
    shifted,
    stamped,
    trace_messages,
    trace_pbx,
)

from callhub.ami.correlator import Correlator
from callhub.ami.parser import AmiMessage
from callhub.records import CallRecord

P01, P09 = "p01_sip_direct_utf8_caller_hangup", "p09_sip_outbound_agent_hangup"
TRUNK, AGENT1 = "PJSIP/trunk-00000000", "PJSIP/1001-00000001"  # p01: caller, agent 1001
CALLER_ID = "1795924532.0"  # p01's Linkedid, the caller's call
CONSULT, TARGET = "PJSIP/1001-00000012", "PJSIP/1002-00000013"  # p09 renamed
CONSULT_ID = "1795924679.18"  # p09's Linkedid, the consult call (newer)
SNAPSHOT = ("Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
            "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Context",
            "Exten", "Priority", "Uniqueid", "Linkedid")


def at(m: AmiMessage, t: float) -> AmiMessage:
    return {**m, "Timestamp": f"{t:.6f}"}


def when(messages: list[AmiMessage], event: str, channel: str) -> float:
    return float(next(m for m in messages if m.get("Event") == event
                      and m.get("Channel") == channel)["Timestamp"])


def of(messages: list[AmiMessage], channel: str, *events: str) -> list[AmiMessage]:
    return [m for m in messages if m.get("Channel") == channel
            and (not events or m.get("Event") in events)]


def snapshot(m: AmiMessage, prefix: str) -> dict[str, str]:
    return {prefix + k: m[k] for k in SNAPSHOT if k in m}


def caller_call() -> tuple[list[AmiMessage], list[AmiMessage]]:
    """p01 while the caller talks with 1001, and its end without the caller's BYE (here
    the agent hangs up first; the dialplan then ends the caller's channel)."""
    p01 = stamped(trace_messages(P01))
    cut = next(i for i, m in enumerate(p01) if m.get("Event") == "HangupRequest")
    end = [m for m in p01[cut:] if not (m.get("Event") == "HangupRequest"
                                        and m.get("Channel") == TRUNK)]
    return p01[:cut], end


def consult_call(start: float) -> tuple[list[AmiMessage], list[AmiMessage]]:
    """p09 as 1001's phone calling agent 1002 from `start`: until both talk, and its end."""
    p09 = rewritten(stamped(trace_messages(P09)), {
        "PJSIP/trunk-00000013": TARGET, "PJSIP/+8613700000099@trunk": "PJSIP/1002",
        "+8613700000099": "1002", "from-pstn": "to-pstn"})
    p09 = shifted(p09, start - float(p09[0]["Timestamp"]))
    cut = next(i for i, m in enumerate(p09) if m.get("Event") == "HangupRequest")
    return p09[:cut], p09[cut:]


def attended_transfer(transferee: AmiMessage, first: AmiMessage, second: AmiMessage,
                      target: AmiMessage, bridge: str, consult_bridge: str,
                      t: float) -> AmiMessage:
    return {"Event": "AttendedTransfer", "Privilege": "call,all", "Timestamp": f"{t:.6f}",
            "Result": "Success", **snapshot(first, "OrigTransferer"),
            "OrigBridgeUniqueid": bridge, **snapshot(second, "SecondTransferer"),
            "SecondBridgeUniqueid": consult_bridge, **snapshot(transferee, "Transferee"),
            **snapshot(target, "TransferTarget"), "IsExternal": "Yes",
            "DestType": "Bridge", "DestBridgeUniqueid": bridge}


def sip_attended_transfer(target_moves: bool = True) -> tuple[list[AmiMessage], float]:
    """1001 answers the caller, calls 1002 from its phone (a call of its own), and after 3 s
    of consulting transfers with REFER/Replaces: Asterisk joins the two bridges, 1001's two
    channels hang up; 1002 talks 5 s with the caller and hangs up first.

    `target_moves`: the consult bridge merges into the caller's (1002's channel leaves it
    and enters the caller's, carrying the caller's Linkedid from then on); else the
    caller's bridge merges into the consult bridge (the caller's channel moves) and 1002's
    next events, its hangup, are the first to carry the caller's Linkedid.
    Returns the events and the time the transfer completed."""
    talk, caller_end = caller_call()
    enter1 = next(m for m in talk if m.get("Event") == "BridgeEnter"
                  and m.get("Channel") == AGENT1)
    bridge = enter1["BridgeUniqueid"]
    consulting, consult_end = consult_call(when(talk, "BridgeEnter", TRUNK) + 1.0)
    enter2 = next(m for m in consulting if m.get("Event") == "BridgeEnter"
                  and m.get("Channel") == TARGET)
    consult_bridge = enter2["BridgeUniqueid"]
    tx = when(consulting, "BridgeEnter", CONSULT) + 3.0
    joined = {"Linkedid": CALLER_ID}
    caller_enter = next(m for m in talk if m.get("Event") == "BridgeEnter"
                        and m.get("Channel") == TRUNK)
    if target_moves:
        moves = [at(like(enter2, "BridgeLeave"), tx),
                 at({**enter2, **joined, "BridgeUniqueid": bridge}, tx + 0.0001)]
        final_bridge = bridge
    else:
        moves = [at(like(caller_enter, "BridgeLeave"), tx),
                 at({**caller_enter, "BridgeUniqueid": consult_bridge}, tx + 0.0001)]
        final_bridge = consult_bridge
    transfer = attended_transfer(caller_enter, enter1, enter2, {**enter2, **joined},
                                 bridge, consult_bridge, tx + 0.0002)
    first_gone = [at(m, tx + 0.001) for m in of(caller_end, AGENT1)]
    second_gone = [at(m, tx + 0.002) for m in of(consult_end, CONSULT)]
    hangup = tx + 5.0
    (gone,) = of(consult_end, TARGET, "Hangup")
    bye = {k: v for k, v in like(gone, "HangupRequest").items() if k != "Cause-txt"}
    target_gone = [at({**m, **joined}, hangup) for m in (bye, gone)]  # as p01's BYE
    target_leaves = at({**enter2, **joined, "Event": "BridgeLeave",
                        "BridgeUniqueid": final_bridge}, hangup)
    caller_gone = [at(m, hangup + 0.001) for m in caller_end if m.get("Channel") != AGENT1
                   and "Channel" in m]
    return [*talk, *consulting, *moves, transfer, *first_gone, *second_gone,
            target_gone[0], target_leaves, target_gone[1], *caller_gone], tx


def feed(correlator: Correlator, messages: list[AmiMessage]) -> dict[str, CallRecord]:
    return {r.linkedid: r for m in messages for r in correlator.feed(m)}


def test_a_sip_attended_transfer_gives_the_caller_to_the_consulted_agent() -> None:
    messages, tx = sip_attended_transfer()
    correlator = Correlator(trace_pbx(P01))
    hangup = next(i for i, m in enumerate(messages) if m.get("Event") == "Hangup"
                  and m.get("Channel") == TARGET)
    records = feed(correlator, messages[:hangup])
    assert "PJSIP/1002" in correlator.busy_interfaces()  # talking with the caller
    records |= feed(correlator, messages[hangup:])
    assert correlator.active_calls == 0, "a call stayed open"
    assert correlator.busy_interfaces() == set()
    assert set(records) == {CALLER_ID, CONSULT_ID}
    caller = records[CALLER_ID]
    assert (caller.outcome, caller.agent, caller.hangup_by) == (
        "answered", "PJSIP/1001", "agent")  # 1002 hung up before the caller
    assert [(t.type, t.to) for t in caller.transfers] == [("attended", "PJSIP/1002")]
    assert [(a.interface, a.result) for a in caller.attempts] == [
        ("PJSIP/1001", "answered"), ("PJSIP/1002", "answered")]
    assert not caller.incomplete and caller.ended_at > tx + 5.0
    consult = records[CONSULT_ID]  # 1001's own call to 1002 ends with the transfer
    assert consult.outcome == "answered" and not consult.incomplete
    assert abs(consult.ended_at - tx) < 0.01
    assert abs(consult.talk_seconds - 3.0) < 0.01


def test_a_transfer_that_moves_the_caller_into_the_consult_bridge_ends_alike() -> None:
    """The bridges merge the other way: the consulted agent's first event under the
    caller's Linkedid is its hangup; the records are the same."""
    messages, tx = sip_attended_transfer(target_moves=False)
    correlator = Correlator(trace_pbx(P01))
    records = feed(correlator, messages)
    assert correlator.active_calls == 0, "a call stayed open"
    assert correlator.busy_interfaces() == set()
    caller = records[CALLER_ID]
    assert caller.hangup_by == "agent"
    assert [(t.type, t.to) for t in caller.transfers] == [("attended", "PJSIP/1002")]
    assert [(a.interface, a.result) for a in caller.attempts] == [
        ("PJSIP/1001", "answered"), ("PJSIP/1002", "answered")]
    consult = records[CONSULT_ID]
    assert abs(consult.ended_at - tx) < 0.01 and abs(consult.talk_seconds - 3.0) < 0.01


@dataclass
class Retrieval:
    """A call parked by 1001 and retrieved by 1002's phone: its AMI events, and the parts
    and moments the CEL rows of the same call are made from (tests/test_cel_transfer.py)."""

    events: list[AmiMessage]
    talk: list[AmiMessage]
    caller_end: list[AmiMessage]
    consulting: list[AmiMessage]
    consult_end: list[AmiMessage]
    retriever: str
    bridge: str
    dials: list[AmiMessage]
    parked: float
    retrieved: float
    hangup: float


def parked_and_retrieved() -> Retrieval:
    """1001 leaves the caller parked (its channel hangs up; the caller waits in a holding
    bridge); 1002's phone dials the parking space (a channel and Linkedid of its own), is
    bridged with the caller, talks 5 s and hangs up first."""
    talk, caller_end = caller_call()
    caller_enter = next(m for m in talk if m.get("Event") == "BridgeEnter"
                        and m.get("Channel") == TRUNK)
    parked = when(talk, "BridgeEnter", TRUNK) + 2.0
    first_gone = [at(m, parked) for m in of(caller_end, AGENT1)]
    holding = [at(like(caller_enter, "BridgeLeave"), parked + 0.001),
               at({**caller_enter, "BridgeUniqueid": "holding"}, parked + 0.002)]
    consulting, consult_end = consult_call(parked + 10.0)
    retriever = "PJSIP/1002-00000012"
    dials = [m for m in rewritten(consulting, {CONSULT: retriever})
             if m.get("Channel") == retriever and m.get("Event") in ("Newchannel", "Newexten")]
    dials = [{**m, "Exten": "701"} for m in dials[:2]]  # Newchannel, its first step
    retrieved = float(dials[-1]["Timestamp"]) + 0.5
    bridge = "retrieved"
    own_enter = at(like(dials[0], "BridgeEnter", BridgeUniqueid=bridge,
                        ChannelState="6", ChannelStateDesc="Up"), retrieved)
    joined = {"Linkedid": CALLER_ID}
    moves = [at(like(caller_enter, "BridgeLeave", BridgeUniqueid="holding"), retrieved),
             at({**caller_enter, "BridgeUniqueid": bridge}, retrieved + 0.001)]
    hangup = retrieved + 5.0
    retriever_gone = [at({**m, **joined}, hangup) for m in
                      rewritten(of(consult_end, CONSULT, "HangupRequest", "Hangup"),
                                {CONSULT: retriever})]
    leaves = at({**own_enter, **joined, "Event": "BridgeLeave"}, hangup)
    caller_gone = [at(m, hangup + 0.001) for m in caller_end if m.get("Channel") != AGENT1
                   and "Channel" in m]
    events = [*talk, *first_gone, *holding, *dials, own_enter, *moves,
              retriever_gone[0], leaves, *retriever_gone[1:], *caller_gone]
    return Retrieval(events, talk, caller_end, consulting, consult_end, retriever, bridge,
                     dials, parked, retrieved, hangup)


def test_a_phone_retrieving_a_parked_call_joins_that_call() -> None:
    """1001 leaves the caller parked (its channel hangs up; the caller waits in a holding
    bridge); 1002's phone dials the parking space (a channel and Linkedid of its own), is
    bridged with the caller, talks 5 s and hangs up first: one call, the caller's, and
    nothing of 1002's own Linkedid stays open."""
    retrieval = parked_and_retrieved()
    messages, hangup = retrieval.events, retrieval.hangup
    correlator = Correlator(trace_pbx(P01))
    records = feed(correlator, messages)
    assert correlator.active_calls == 0, "a call stayed open"
    assert correlator.busy_interfaces() == set()
    assert set(records) == {CALLER_ID}
    caller = records[CALLER_ID]
    assert (caller.outcome, caller.agent, caller.hangup_by) == (
        "answered", "PJSIP/1001", "agent")  # 1002 hung up before the caller
    assert caller.ended_at > hangup and not caller.incomplete


def test_a_callers_channel_bridged_into_an_older_call_stays_in_its_own_call() -> None:
    """Two callers bridged together (a conference of two inbound calls): the newer caller's
    channel carries the older call's Linkedid from then on, but a caller's call never
    becomes another's: both are recorded, each ended by its own caller, nothing open."""
    p01 = stamped(trace_messages(P01))
    bye = next(i for i, m in enumerate(p01) if m.get("Event") == "HangupRequest")
    older = [*p01[:bye], *shifted(p01[bye:], 5.0)]  # still talking when the newer ends
    newer_id, newer_trunk = "1795924540.0", "PJSIP/trunk-00000010"

    def ids(m: AmiMessage) -> AmiMessage:
        return {k: v.replace("1795924532.", "1795924540.") if k.endswith(
            ("Uniqueid", "Linkedid")) and not k.startswith("Bridge") else v
            for k, v in m.items()}
    newer = shifted([ids(m) for m in rewritten(p01, {"-00000000": "-00000010",
                                                      "-00000001": "-00000011"})], 2.0)
    cut = next(i for i, m in enumerate(newer) if m.get("Event") == "HangupRequest")
    newer = [*newer[:cut], *({**m, "Linkedid": CALLER_ID} if m.get("Channel") == newer_trunk
                             else m for m in newer[cut:])]
    correlator = Correlator(trace_pbx(P01))
    records = feed(correlator, merged_by_time(older, newer))
    assert correlator.active_calls == 0, "a call stayed open"
    assert set(records) == {CALLER_ID, newer_id}
    for record in records.values():
        assert (record.outcome, record.hangup_by) == ("answered", "external")
        assert not record.incomplete
