"""Outbound calls: `called_number` is the number dialled (DESIGN.md), also when an AMI
Originate placed the call from the agent's phone (click-to-call, a callback from a CRM).

Trace p09 is an agent dialling out from PJSIP/1001 (`Newchannel` in `to-pstn` with the
number as its `Exten`). Placed by `Originate Channel=PJSIP/1001 Context=to-pstn
Exten=<number>` the same call starts otherwise: Asterisk creates the agent's channel as an
outgoing one, `Down`, in its endpoint's context with `Exten: s` (as p01 shows for the
agent leg it dials), and the originate's own DialBegin/DialEnd to it carry no `Channel`
(as in trace 10); once the agent answers, the channel runs `to-pstn,<number>`.
"""

from __future__ import annotations

from traces_fixtures import first, like, only_record, stamped, trace_messages

from callhub.ami.parser import AmiMessage
from callhub.records import CallRecord

P09 = "p09_sip_outbound_agent_hangup"
AGENT = "PJSIP/1001-00000012"
NUMBER = "+8613700000099"


def correlate(messages: list[AmiMessage]) -> CallRecord:
    return only_record(P09, messages)


def originated(messages: list[AmiMessage]) -> list[AmiMessage]:
    """p09 as an AMI Originate of the agent's phone would report it."""
    at = first(messages, "Newchannel", AGENT)
    created = messages[at]
    assert created["Exten"] == NUMBER
    newchannel = {**created, "Exten": "s", "ChannelState": "0", "ChannelStateDesc": "Down"}
    snapshot = {k: v for k, v in newchannel.items()
                if k not in ("Event", "Privilege", "Timestamp")}
    dest = {f"Dest{k}": v for k, v in snapshot.items()}
    begin = {"Event": "DialBegin", "Privilege": created["Privilege"],
             "Timestamp": created["Timestamp"], **dest, "DialString": "PJSIP/1001"}
    end = like(begin, "DialEnd", DialStatus="ANSWER", DestChannelState="6",
               DestChannelStateDesc="Up")
    dial = next(i for i, m in enumerate(messages) if m.get("Event") == "Newexten"
                and m.get("Channel") == AGENT)  # the agent answered: the dialplan runs
    return [*messages[:at], newchannel, begin, *messages[at + 1:dial], end, *messages[dial:]]


def test_a_call_originated_from_the_agents_phone_is_called_the_number_it_dials() -> None:
    messages = stamped(trace_messages(P09))
    plain = correlate(messages)
    assert (plain.direction, plain.called_number) == ("outbound", NUMBER)
    record = correlate(originated(messages))
    assert record.direction == "outbound" and record.agent == "PJSIP/1001"
    assert record.called_number == NUMBER
    assert record.external_number == NUMBER  # what the worklist matches on
    assert record.to_dict() == plain.to_dict()


def test_an_originate_the_agent_never_answers_has_no_called_number() -> None:
    """The agent's phone rang and was not picked up: the dialplan never ran, so nothing
    says the number; the record says none rather than the `s` of the channel's start."""
    messages = originated(stamped(trace_messages(P09)))
    dial = next(i for i, m in enumerate(messages) if m.get("Event") == "Newexten"
                and m.get("Channel") == AGENT)
    end = next(i for i, m in enumerate(messages) if m.get("Event") == "DialEnd"
               and m.get("DestChannel") == AGENT and "Channel" not in m)
    hangup = [m for m in messages if m.get("Event") == "Hangup" and m.get("Channel") == AGENT]
    unanswered = [*messages[:end], {**messages[end], "DialStatus": "NOANSWER"}, *hangup]
    assert dial > end
    record = correlate(unanswered)
    assert record.direction == "outbound" and record.outcome == "unanswered"
    assert record.called_number is None
