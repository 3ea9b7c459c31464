"""Outbound calls rebuilt from CEL: `called_number` is the number dialled (DESIGN.md), also
when an AMI Originate placed the call from the agent's phone (click-to-call, a CRM callback).

Trace p09 is an agent dialling out from PJSIP/1001: its CEL rows start with the agent's
CHAN_START in `to-pstn` with the number as its extension. Placed by `Originate
Channel=PJSIP/1001 Context=to-pstn Exten=<number>` the same call starts otherwise (as
tests/test_correlator_outbound.py has it on AMI): Asterisk creates the agent's channel in
its endpoint's context with extension `s`, and the agent answers it (its ANSWER row, still
at `s`) before the dialplan runs `to-pstn,<number>`; Dial does not answer it again, so the
recorded ANSWER row of the Dial is not there. The rows after it carry the number.
"""

from __future__ import annotations

from typing import Any

from traces_fixtures import trace, trace_pbx

from callhub.ami.cel import interpret
from callhub.ami.cel_ami import cel_rows
from callhub.ami.parser import iter_file_messages
from callhub.records import CallRecord

P09 = "p09_sip_outbound_agent_hangup"
AGENT = "PJSIP/1001-00000012"
NUMBER = "+8613700000099"


def rows_of_p09() -> list[dict[str, Any]]:
    return list(cel_rows(iter_file_messages(trace(P09))))


def rebuild(rows: list[dict[str, Any]]) -> CallRecord:
    (record,) = interpret(rows, trace_pbx(P09))
    assert not record.incomplete
    return record


def originated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """p09's rows as an AMI Originate of the agent's phone would have cel_pgsql write them."""
    start = rows[0]
    assert (start["eventtype"], start["channame"], start["exten"]) == ("CHAN_START", AGENT, NUMBER)
    created = {**start, "exten": "s"}
    answered = {**created, "eventtype": "ANSWER"}  # the agent took the originate's call
    rest = [r for r in rows[1:] if not (r["eventtype"] == "ANSWER" and r["channame"] == AGENT)]
    return [created, answered, *rest]


def test_a_call_originated_from_the_agents_phone_is_called_the_number_it_dials() -> None:
    rows = rows_of_p09()
    plain = rebuild(rows)
    assert (plain.direction, plain.called_number) == ("outbound", NUMBER)
    record = rebuild(originated(rows))
    assert record.direction == "outbound" and record.agent == "PJSIP/1001"
    assert record.called_number == NUMBER
    assert record.external_number == NUMBER  # what the worklist matches on
    assert record.to_dict() == plain.to_dict()


def test_an_originate_whose_number_never_answers_is_called_that_number() -> None:
    """The agent answered, the dialplan dialled the number and the far end never answered:
    no bridge, no answer of the trunk leg; the agent's hangup row still carries the
    extension its dialplan ran."""
    rows = [r for r in originated(rows_of_p09())
            if r["eventtype"] not in ("BRIDGE_ENTER", "BRIDGE_EXIT")
            and not (r["eventtype"] == "ANSWER" and r["channame"] != AGENT)]
    rows = [{**r, "extra": r["extra"].replace('"ANSWER"', '"CANCEL"')}
            if r["eventtype"] == "HANGUP" else r for r in rows]
    ends = [r for r in rows if r["channame"] == AGENT and r["eventtype"] == "HANGUP"]
    assert [r["exten"] for r in ends] == [NUMBER]
    record = rebuild(rows)
    assert record.direction == "outbound" and record.outcome == "unanswered"
    assert record.called_number == NUMBER


def test_an_originate_the_agent_never_answers_has_no_called_number() -> None:
    """The agent's phone rang and was not picked up: the dialplan never ran, so no row says
    the number; the record says none rather than the `s` of the channel's start."""
    created, _, *rest = originated(rows_of_p09())
    ends = [{**r, "exten": "s", "appname": "", "appdata": ""} for r in rest
            if r["channame"] == AGENT and r["eventtype"] in ("HANGUP", "CHAN_END")]
    end = {**rest[-1], "channame": AGENT, "uniqueid": created["uniqueid"], "exten": "s",
           "context": created["context"], "appname": "", "appdata": ""}
    assert end["eventtype"] == "LINKEDID_END"
    record = rebuild([created, *ends, end])
    assert record.direction == "outbound" and record.outcome == "unanswered"
    assert record.called_number is None
