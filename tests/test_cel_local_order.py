"""The CEL rebuild orders a Local ring group's attempts as the members were offered (as
the AMI path does, DESIGN.md), not as the members' halves dialled their phones."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cel_fixtures import trace_rows
from traces_fixtures import trace, trace_pbx

from callhub.ami.cel import interpret
from callhub.records import CallRecord

R01 = "r01_sip_ringgroup_local_members"
PHONE1, PHONE2 = "PJSIP/1001-0000004f", "PJSIP/1002-00000050"


def rebuilt(rows: list[dict[str, Any]]) -> CallRecord:
    [record] = interpret(rows, trace_pbx(R01))
    return record


def test_a_second_member_whose_phone_starts_first_is_still_the_second_attempt() -> None:
    rows = trace_rows(trace(R01))
    as_recorded = rebuilt(rows)
    start1 = next(r for r in rows if r["eventtype"] == "CHAN_START" and r["channame"] == PHONE1)
    start2 = next(r for r in rows if r["eventtype"] == "CHAN_START" and r["channame"] == PHONE2)
    # Member 2's half dials its phone a millisecond before member 1's half does.
    early = {**start2, "eventtime": start1["eventtime"] - timedelta(milliseconds=1),
             "id": start1["id"] - 0.5}
    swapped = sorted([early if r is start2 else r for r in rows], key=lambda r: r["id"])
    record = rebuilt(swapped)
    assert [a.interface for a in as_recorded.attempts] == ["PJSIP/1001", "PJSIP/1002"]
    assert [(a.interface, a.result) for a in record.attempts] == [
        (a.interface, a.result) for a in as_recorded.attempts]
    assert (record.outcome, record.agent) == (as_recorded.outcome, as_recorded.agent)
