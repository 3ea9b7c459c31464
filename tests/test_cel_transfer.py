"""A channel that joins an older call, rebuilt from CEL: the records must be those the AMI
correlator makes of the same flow (tests/test_correlator_transfer.py).

Asterisk gives every channel of a bridge the oldest Linkedid among them. CEL shows it as
the channel's rows carrying the older call's linkedid from then on; the row that bridges it
(its BRIDGE_ENTER) still carries the one it had (trace q05: the picker's BRIDGE_ENTER, then
LINKEDID_END of its own linkedid, then its rows under the picked call's). The change itself
writes no row; a linkedid whose last channel leaves it for another ends there
(`LINKEDID_END` of a channel that has not ended: cel.c `cel_channel_linkedid_change`).

The flows are the AMI tests' own: the caller's call is p01 (trunk -> PJSIP/1001, talking),
the consult call p09 (1001's phone calling out, answered), its called side renamed the phone
of agent 1002. The CEL rows until the transfer are the recorded ones of those traces, at the
same times and under the same renames as the AMI events; the rows at and after the transfer
are copies of recorded rows with the linkedid Asterisk gives them. AMI events and CEL rows of
one flow are fed each to its own path and the records compared.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_correlator_transfer import (
    AGENT1,
    CALLER_ID,
    CONSULT,
    CONSULT_ID,
    P01,
    TARGET,
    TRUNK,
    caller_call,
    consult_call,
    feed,
    sip_attended_transfer,
    when,
)
from test_correlator_transfer import parked_and_retrieved as retrieved_on_ami
from traces_fixtures import (
    merged_by_time,
    rewritten,
    shifted,
    stamped,
    trace_messages,
    trace_pbx,
)

from callhub.ami.cel import CelInterpreter
from callhub.ami.cel_ami import cel_rows
from callhub.ami.correlator import Correlator
from callhub.ami.parser import AmiMessage
from callhub.records import CallRecord

TOLERANCE = 0.01  # an AMI event and the CEL row of the same moment are microseconds apart


def cel(messages: list[AmiMessage]) -> list[AmiMessage]:
    return [m for m in messages if m.get("Event") == "CEL"]


def row(messages: list[AmiMessage], name: str, channel: str) -> AmiMessage:
    """The recorded CEL event `name` of `channel`."""
    return next(m for m in cel(messages) if m["EventName"] == name and m["Channel"] == channel)


def moved(m: AmiMessage, t: float, name: str | None = None, linkedid: str | None = None,
          bridge: str | None = None, **extra: str) -> AmiMessage:
    """A copy of a recorded CEL event at `t`: another event, linkedid, bridge or extra."""
    out = {**m, "Timestamp": f"{t:.6f}"}
    if name is not None:
        out["EventName"] = name
    if linkedid is not None:
        out["LinkedID"] = linkedid
    if bridge is not None or extra:
        fields: dict[str, Any] = json.loads(m.get("Extra") or "{}")
        if bridge is not None:
            fields["bridge_id"] = bridge
        out["Extra"] = json.dumps({**fields, **extra})
    return out


def gone(m_hangup: AmiMessage, m_end: AmiMessage, exit_: AmiMessage, t: float,
         linkedid: str, bridge: str, source: str, dialstatus: str = "") -> list[AmiMessage]:
    """A channel leaving its bridge and hanging up at `t` (as p09's rows of one channel)."""
    return [moved(exit_, t, "BRIDGE_EXIT", linkedid, bridge),
            moved(m_hangup, t, linkedid=linkedid, hangupsource=source, dialstatus=dialstatus),
            moved(m_end, t, linkedid=linkedid)]


def sip_attended_transfer_cel(target_moves: bool = True,
                              caller_first: bool = False) -> list[dict[str, Any]]:
    """The CEL rows of `sip_attended_transfer`: 1001 answers the caller, calls 1002 from its
    phone (a linkedid of its own) and transfers with REFER/Replaces after 3 s of consulting;
    Asterisk joins the two bridges and hangs up 1001's two channels. 1002 talks 5 s with the
    caller; then 1002 hangs up first, or the caller (`caller_first`).

    `target_moves`: 1002's channel leaves the consult bridge for the caller's (its
    BRIDGE_ENTER there still under the consult call's linkedid); else the caller's channel
    moves into the consult bridge and 1002's first row under the caller's linkedid is its
    hangup. The consult linkedid ends when 1001's consult channel ends."""
    talk, caller_end = caller_call()
    start = when(talk, "BridgeEnter", TRUNK) + 1.0
    consulting, consult_end = consult_call(start)
    tx = when(consulting, "BridgeEnter", CONSULT) + 3.0  # as sip_attended_transfer
    p01 = talk + caller_end
    p09 = consulting + consult_end
    before = [m for m in cel(talk) if m["EventName"] in ("CHAN_START", "ANSWER", "BRIDGE_ENTER")]
    enter1, enter_trunk = row(p01, "BRIDGE_ENTER", AGENT1), row(p01, "BRIDGE_ENTER", TRUNK)
    enter2, enter_consult = row(p09, "BRIDGE_ENTER", TARGET), row(p09, "BRIDGE_ENTER", CONSULT)
    bridge = json.loads(enter1["Extra"])["bridge_id"]
    consult_bridge = json.loads(enter2["Extra"])["bridge_id"]
    if target_moves:
        moves = [moved(enter2, tx, "BRIDGE_EXIT"),
                 moved(enter2, tx + 0.0001, bridge=bridge)]  # still the consult's linkedid
        final = bridge
    else:
        moves = [moved(enter_trunk, tx, "BRIDGE_EXIT"),
                 moved(enter_trunk, tx + 0.0001, bridge=consult_bridge)]
        final = consult_bridge
    transfer = moved(enter1, tx + 0.0002, "ATTENDEDTRANSFER")
    transfer["Extra"] = json.dumps({
        "bridge1_id": bridge, "channel2_name": CONSULT,
        "channel2_uniqueid": enter_consult["UniqueID"], "bridge2_id": consult_bridge,
        "transferee_channel_name": TRUNK, "transferee_channel_uniqueid": enter_trunk["UniqueID"],
        "transfer_target_channel_name": TARGET,
        "transfer_target_channel_uniqueid": enter2["UniqueID"]})
    first_gone = gone(row(p01, "HANGUP", AGENT1), row(p01, "CHAN_END", AGENT1), enter1,
                      tx + 0.001, CALLER_ID, bridge, "")
    second_gone = gone(row(p09, "HANGUP", CONSULT), row(p09, "CHAN_END", CONSULT),
                       enter_consult, tx + 0.002, CONSULT_ID, consult_bridge, "")
    consult_over = moved(second_gone[-1], tx + 0.002, "LINKEDID_END")
    hangup = tx + 5.0
    target = gone(row(p09, "HANGUP", TARGET), row(p09, "CHAN_END", TARGET), enter2, hangup,
                  CALLER_ID, final, TRUNK if caller_first else TARGET)
    caller = gone(row(p01, "HANGUP", TRUNK), row(p01, "CHAN_END", TRUNK), enter_trunk, hangup,
                  CALLER_ID, final, TRUNK if caller_first else TARGET, "ANSWER")
    ends = [*caller, *target] if caller_first else [*target, *caller]
    ends = [moved(m, hangup + 0.001 * (i // 3)) for i, m in enumerate(ends)]
    end = moved(ends[-1], hangup + 0.002, "LINKEDID_END")
    ordered = [*before, *cel(consulting), *moves, transfer, *first_gone, *second_gone,
               consult_over, *ends, end]
    return list(cel_rows(ordered))


def rebuilt(rows: list[dict[str, Any]]) -> tuple[dict[str, CallRecord], CelInterpreter]:
    interpreter = CelInterpreter(trace_pbx(P01))
    return {r.linkedid: r for row in rows for r in interpreter.feed(row)}, interpreter


def differences(ami: CallRecord, rebuilt: CallRecord) -> list[str]:
    """What a CEL record tells otherwise than the AMI one of the same call; ringing aside
    (CEL has no ringing event: `rings_estimated`)."""
    out: list[str] = []
    a, c = ami.to_dict(), rebuilt.to_dict()
    for key in ("direction", "line", "called_number", "caller_number", "caller_name",
                "outcome", "reason", "voicemail", "short_abandon", "agent", "agent_name",
                "hangup_by", "hangup_cause", "queue", "incomplete"):
        if a[key] != c[key]:
            out.append(f"{key}: ami {a[key]!r}, cel {c[key]!r}")
    for key in ("arrived_at", "answered_at", "ended_at", "talk_seconds", "wait_seconds",
                "hold_seconds"):
        x, y = getattr(ami, key), getattr(rebuilt, key)
        if (x is None) != (y is None) or (x is not None and abs(x - y) > TOLERANCE):
            out.append(f"{key}: ami {x!r}, cel {y!r}")
    if [(t.type, t.to) for t in ami.transfers] != [(t.type, t.to) for t in rebuilt.transfers]:
        out.append(f"transfers: ami {a['transfers']}, cel {c['transfers']}")
    elif any(abs(x.at - y.at) > TOLERANCE for x, y in zip(ami.transfers, rebuilt.transfers,
                                                           strict=True)):
        out.append(f"transfers at: ami {a['transfers']}, cel {c['transfers']}")
    attempts = [[(t.interface, t.result) for t in r.attempts] for r in (ami, rebuilt)]
    if attempts[0] != attempts[1]:
        out.append(f"attempts: ami {attempts[0]}, cel {attempts[1]}")
    else:
        for x, y in zip(ami.attempts, rebuilt.attempts, strict=True):
            if abs(x.offered_at - y.offered_at) > TOLERANCE or abs(
                    (x.ended_at or 0.0) - (y.ended_at or 0.0)) > TOLERANCE:
                out.append(f"attempt {x.interface}: ami {x}, cel {y}")
    return out


@pytest.mark.parametrize("target_moves", [True, False], ids=["target-moves", "caller-moves"])
def test_a_sip_attended_transfer_rebuilt_from_cel_is_the_ami_record(target_moves: bool) -> None:
    messages, tx = sip_attended_transfer(target_moves)
    correlator = Correlator(trace_pbx(P01))
    ami = feed(correlator, [m for m in messages if m.get("Event") != "CEL"])
    assert correlator.active_calls == 0 and set(ami) == {CALLER_ID, CONSULT_ID}
    records, interpreter = rebuilt(sip_attended_transfer_cel(target_moves))
    assert interpreter.open_calls == 0, "a call stayed open"
    assert set(records) == {CALLER_ID, CONSULT_ID}
    for linkedid in ami:
        assert differences(ami[linkedid], records[linkedid]) == [], linkedid
    caller = records[CALLER_ID]  # DESIGN.md's terms, as the AMI test has them
    assert (caller.outcome, caller.agent, caller.hangup_by) == ("answered", "PJSIP/1001", "agent")
    assert [(t.type, t.to) for t in caller.transfers] == [("attended", "PJSIP/1002")]
    assert [(a.interface, a.result) for a in caller.attempts] == [
        ("PJSIP/1001", "answered"), ("PJSIP/1002", "answered")]
    consulted = caller.attempts[1]  # offered and answered in the consult call
    assert consulted.offered_at < consulted.ended_at < tx
    assert not caller.incomplete and caller.ended_at > tx + 5.0
    consult = records[CONSULT_ID]  # 1001's own call to 1002 ends with the transfer
    assert consult.outcome == "answered" and not consult.incomplete
    assert abs(consult.ended_at - tx) < 0.01 and abs(consult.talk_seconds - 3.0) < 0.01


@pytest.mark.parametrize("target_moves", [True, False], ids=["target-moves", "caller-moves"])
def test_a_caller_hanging_up_on_the_consulted_agent_hung_up_first(target_moves: bool) -> None:
    records, interpreter = rebuilt(sip_attended_transfer_cel(target_moves, caller_first=True))
    assert interpreter.open_calls == 0
    caller = records[CALLER_ID]
    assert (caller.outcome, caller.hangup_by) == ("answered", "external")
    assert [(a.interface, a.result) for a in caller.attempts] == [
        ("PJSIP/1001", "answered"), ("PJSIP/1002", "answered")]


def parked_and_retrieved() -> tuple[list[AmiMessage], list[dict[str, Any]], float]:
    """1001 parks the caller (its channel hangs up; the caller waits in a holding bridge);
    1002's phone dials the parking space (a channel and linkedid of its own), is bridged
    with the caller, talks 5 s and hangs up first: the AMI events of the correlator's test
    (tests/test_correlator_transfer.py) and the CEL rows of the same moments. The
    retriever's BRIDGE_ENTER still carries its own linkedid, which ends as the caller joins
    (LINKEDID_END of a channel that is up, as the picker's in q05); its rows after that
    carry the caller's. Returns the events, the rows and the time 1002 hung up."""
    ami = retrieved_on_ami()
    talk, caller_end, dials, retriever = ami.talk, ami.caller_end, ami.dials, ami.retriever
    parked, retrieved, hangup, bridge = ami.parked, ami.retrieved, ami.hangup, ami.bridge
    consulting, consult_end, events = ami.consulting, ami.consult_end, ami.events

    p01, p09 = talk + caller_end, rewritten(consulting + consult_end, {CONSULT: retriever})
    enter1, enter_trunk = row(p01, "BRIDGE_ENTER", AGENT1), row(p01, "BRIDGE_ENTER", TRUNK)
    b1 = json.loads(enter1["Extra"])["bridge_id"]
    start = {**row(p09, "CHAN_START", retriever), "Exten": "701"}
    start = moved(start, float(dials[0]["Timestamp"]))
    mine = moved(start, retrieved, "BRIDGE_ENTER", bridge=bridge)
    rows = [
        *[m for m in cel(talk) if m["EventName"] in ("CHAN_START", "ANSWER", "BRIDGE_ENTER")],
        *gone(row(p01, "HANGUP", AGENT1), row(p01, "CHAN_END", AGENT1), enter1, parked,
              CALLER_ID, b1, AGENT1),
        moved(enter_trunk, parked + 0.001, "BRIDGE_EXIT"),
        moved(enter_trunk, parked + 0.002, bridge="holding"),
        start, moved(start, retrieved - 0.001, "ANSWER"),  # ParkedCall answers it
        mine, moved(mine, retrieved, "LINKEDID_END"),
        moved(enter_trunk, retrieved, "BRIDGE_EXIT", bridge="holding"),
        moved(enter_trunk, retrieved + 0.001, bridge=bridge),
        *gone(row(p09, "HANGUP", retriever), row(p09, "CHAN_END", retriever), mine, hangup,
              CALLER_ID, bridge, retriever),
        *gone(row(p01, "HANGUP", TRUNK), row(p01, "CHAN_END", TRUNK), enter_trunk,
              hangup + 0.001, CALLER_ID, bridge, retriever, "ANSWER")]
    rows.append(moved(rows[-1], hangup + 0.001, "LINKEDID_END"))
    return events, list(cel_rows(rows)), hangup


def test_a_retrieved_parked_call_rebuilt_from_cel_is_the_ami_record() -> None:
    """The retriever joins the caller's call (no attempt: nobody offered it the call), its
    own linkedid is no record, nothing stays open; as on AMI."""
    events, rows, hangup = parked_and_retrieved()
    correlator = Correlator(trace_pbx(P01))
    ami = feed(correlator, [m for m in events if m.get("Event") != "CEL"])
    assert correlator.active_calls == 0 and set(ami) == {CALLER_ID}
    records, interpreter = rebuilt(rows)
    assert interpreter.open_calls == 0, "a call stayed open"
    assert set(records) == {CALLER_ID}
    assert differences(ami[CALLER_ID], records[CALLER_ID]) == []
    caller = records[CALLER_ID]
    assert (caller.outcome, caller.agent, caller.hangup_by) == ("answered", "PJSIP/1001", "agent")
    assert [(a.interface, a.result) for a in caller.attempts] == [("PJSIP/1001", "answered")]
    assert caller.ended_at > hangup and not caller.incomplete


def test_a_retrieved_call_whose_caller_is_not_among_the_rows_keeps_its_own_record() -> None:
    """The rows start after the caller's call did (a CEL window cut): the retriever's own
    linkedid has nowhere else to go and is rebuilt as the call it was, not lost."""
    _, rows, _ = parked_and_retrieved()
    own = next(r["linkedid"] for r in rows if r["linkedid"] != CALLER_ID)
    records, interpreter = rebuilt([r for r in rows if r["linkedid"] == own] + [
        r for r in rows if r["linkedid"] == CALLER_ID and r["channame"].startswith("PJSIP/1002")])
    assert list(records) == [own] and not records[own].incomplete
    assert (records[own].direction, records[own].called_number) == ("outbound", "701")
    (cut,) = interpreter.flush()  # the caller's call, of which only its end is among the rows
    assert cut.linkedid == CALLER_ID and cut.incomplete
    assert interpreter.open_calls == 0


def test_callers_bridged_into_an_older_call_stay_in_their_own_calls() -> None:
    """Two inbound calls bridged together (a conference): the newer call's channels carry
    the older call's linkedid from then on, and its own linkedid ends while its caller is
    still up. A caller's call never becomes another's (as on AMI,
    tests/test_correlator_transfer.py): both are recorded, each ended by its own caller,
    the newer one when its caller hangs up; nothing stays open."""
    p01 = cel(stamped(trace_messages(P01)))
    cut = next(i for i, m in enumerate(p01) if m["EventName"] == "BRIDGE_EXIT")
    older = [*p01[:cut], *shifted(p01[cut:], 5.0)]  # still talking when the newer ends
    newer_id, newer_trunk = "1795924540.0", "PJSIP/trunk-00000010"
    ids = {"UniqueID", "LinkedID"}
    bridge = json.loads(row(p01, "BRIDGE_ENTER", TRUNK)["Extra"])["bridge_id"]
    newer = shifted([{k: v.replace("1795924532.", "1795924540.") if k in ids else v
                      for k, v in m.items()} for m in rewritten(p01, {
                          "-00000000": "-00000010", "-00000001": "-00000011",
                          bridge: "newer-bridge"})], 2.0)  # channels, ids, a bridge of its own
    joined = float(newer[cut]["Timestamp"]) - 1.0
    newer = [*newer[:cut], moved(newer[cut - 1], joined, "LINKEDID_END"),
             *(moved(m, float(m["Timestamp"]), linkedid=CALLER_ID) for m in newer[cut:-1])]
    records, interpreter = rebuilt(list(cel_rows(merged_by_time(older, newer))))
    assert interpreter.open_calls == 0, "a call stayed open"
    assert set(records) == {CALLER_ID, newer_id}
    for record in records.values():
        assert (record.outcome, record.hangup_by) == ("answered", "external")
        assert not record.incomplete
    newer_end = max(float(m["Timestamp"]) for m in newer if m["Channel"] == newer_trunk)
    assert abs(records[newer_id].ended_at - newer_end) < 0.001
    assert records[newer_id].ended_at < records[CALLER_ID].ended_at
