"""The CEL interpreter against the recorded traces: CEL events alone, ground truth out.

Every trace carries its calls' CEL events (`Event: CEL` over AMI). They are
turned into cel_pgsql rows (`callhub.ami.cel_ami`) and fed to the interpreter
with no other event; its records must match the trace's `expected.calls`, every
asserted key (outcome, reason, agent, hangup_by, attempts with their results,
rings, seconds within the tolerance, transfers, caller and called numbers).

No asserted key had to be left out for CEL on these traces. What CEL cannot
carry in general, and how the interpreter stands in for it:
- ringing: CEL has no ringing event, so an offer rings from its leg's
  CHAN_START (records say `rings_estimated`); an offer that ends busy or
  unavailable is taken as never having rung;
- the dialplan's routing result (`CALLHUB_ROUTE_RESULT` for "no agent on
  duty") is a channel variable CEL does not log: an unanswered call with no
  attempt is `no_agent_on_duty` by the same fallback the correlator uses;
- which channel dialled which: a dialled channel inherits the dialler's
  extension, which is what ties a device to the Local ring-group leg that
  dialled it;
- the CLI an outbound call presents is seen only at the next row the origin
  writes, after the answer: `caller_number` of an outbound call may be the
  caller ID the phone started with (trace 10: `agent1` where AMI has `4008001000`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from traces_fixtures import all_traces, trace, trace_pbx

from callhub.ami.callrules import ring_span, rings_for
from callhub.ami.cel import CEL_COLUMNS, CelInterpreter, interpret, row_time
from callhub.ami.cel_ami import cel_row, cel_rows
from callhub.ami.groundtruth import compare, load_truth, pbx_from_truth
from callhub.ami.parser import iter_file_messages
from callhub.records import CallRecord

TRACES = all_traces()


def trace_rows(path: Path) -> list[dict[str, Any]]:
    return list(cel_rows(iter_file_messages(path)))


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.stem)
def test_cel_rows_alone_rebuild_every_call_of_the_ground_truth(path: Path) -> None:
    truth = load_truth(path)
    rows = trace_rows(path)
    assert rows, "the trace carries CEL events"
    records = interpret(rows, pbx_from_truth(truth))
    assert compare(records, truth) == []
    for record in records:
        assert record.source == "cel" and record.rings_estimated
        assert not record.incomplete
        for attempt in record.attempts:
            rang = attempt.result not in ("busy", "unavailable")
            assert (attempt.ring_started_at == attempt.offered_at) is rang


def test_calls_of_every_trace_interleaved_give_the_same_records() -> None:
    """Rows of all traces merged in time order (one busy CEL table): each call is
    rebuilt as from its own trace alone."""
    alone: dict[str, dict[str, Any]] = {}
    merged: list[tuple[datetime, int, dict[str, Any]]] = []
    pbx = trace_pbx("01_answered_caller_hangup")
    for number, path in enumerate(TRACES):
        rows = trace_rows(path)
        alone.update((r.linkedid, r.to_dict()) for r in interpret(rows, pbx))
        merged.extend((row["eventtime"], number * 10_000 + row["id"], row) for row in rows)
    merged.sort(key=lambda item: (item[0], item[1]))
    together = {r.linkedid: r.to_dict() for r in interpret([m[2] for m in merged], pbx)}
    assert together == alone
    assert len(together) == sum(len(load_truth(p)["expected"]["calls"]) for p in TRACES)


def test_adapter_gives_cel_pgsql_rows_in_utc_with_microseconds() -> None:
    messages = list(iter_file_messages(trace("01_answered_caller_hangup")))
    cel = [m for m in messages if m.get("Event") == "CEL"]
    rows = list(cel_rows(messages))
    assert len(rows) == len(cel)
    assert [row["id"] for row in rows] == list(range(1, len(rows) + 1))
    for message, row in zip(cel, rows, strict=True):
        assert set(row) == {*CEL_COLUMNS, "id"}
        assert row["eventtime"].tzinfo is None
        assert row_time(row["eventtime"]) == pytest.approx(float(message["Timestamp"]), abs=1e-6)
        assert row["eventtype"] == message["EventName"]
        assert row["channame"] == message["Channel"]
        assert row["amaflags"] == 3  # DOCUMENTATION
    assert cel_row({"Event": "Newchannel"}) is None


def test_adapter_reads_event_time_as_local_time_without_a_timestamp() -> None:
    message = {"Event": "CEL", "EventName": "CHAN_START", "EventTime": "2026-11-29 11:12:59",
               "UniqueID": "1.1", "LinkedID": "1.1"}
    from zoneinfo import ZoneInfo
    row = cel_row(message, ZoneInfo("Asia/Shanghai"))
    assert row is not None
    assert row["eventtime"] == datetime(2026, 11, 29, 3, 12, 59)


def test_row_time_takes_naive_utc_aware_text_and_numbers() -> None:
    moment = datetime(2026, 11, 29, 3, 12, 59, 174284)
    stamp = moment.replace(tzinfo=UTC).timestamp()
    assert row_time(moment) == stamp
    assert row_time(moment.replace(tzinfo=UTC)) == stamp
    assert row_time("2026-11-29 03:12:59.174284") == stamp
    assert row_time(stamp) == stamp
    with pytest.raises(ValueError):
        row_time(None)


def test_a_call_cut_before_its_linkedid_end_is_closed_incomplete_by_flush() -> None:
    rows = trace_rows(trace("01_answered_caller_hangup"))
    interpreter = CelInterpreter(trace_pbx("01_answered_caller_hangup"))
    cut = [row for row in rows if row["eventtype"] != "LINKEDID_END"]
    assert [r for row in cut for r in interpreter.feed(row)] == []
    assert interpreter.open_calls == 1
    (record,) = interpreter.flush()
    assert record.incomplete and record.outcome == "answered"
    assert record.ended_at == row_time(cut[-1]["eventtime"])
    assert interpreter.open_calls == 0 and interpreter.flush() == []


def test_a_call_whose_start_is_missing_is_flagged_incomplete() -> None:
    rows = trace_rows(trace("01_answered_caller_hangup"))
    late = [row for row in rows if row["eventtype"] != "CHAN_START"]
    (record,) = interpret(late, trace_pbx("01_answered_caller_hangup"))
    assert record.incomplete
    assert record.linkedid == rows[0]["linkedid"]


def test_rows_after_the_linkedid_end_start_no_ghost_call() -> None:
    rows = trace_rows(trace("02_answered_agent_hangup"))
    records = interpret(rows + rows[-3:], trace_pbx("02_answered_agent_hangup"))
    assert [r.linkedid for r in records] == [rows[0]["linkedid"]]


def test_unreadable_rows_are_counted_and_skipped() -> None:
    rows = trace_rows(trace("05_busy_agent"))
    bad: list[dict[str, Any]] = [
        {**rows[0], "linkedid": ""},
        {**rows[0], "eventtime": "yesterday"},
        {**rows[0], "eventtime": None},
    ]
    interpreter = CelInterpreter(trace_pbx("05_busy_agent"))
    records = [r for row in bad + rows for r in interpreter.feed(row)]
    assert interpreter.errors == len(bad)
    assert compare(records, load_truth(trace("05_busy_agent"))) == []


def test_extra_that_is_not_json_is_read_as_empty() -> None:
    rows = trace_rows(trace("01_answered_caller_hangup"))
    garbled = [{**row, "extra": "{not json"} if row["eventtype"] == "HANGUP" else row
               for row in rows]
    (record,) = interpret(garbled, trace_pbx("01_answered_caller_hangup"))
    assert record.outcome == "answered"
    assert record.hangup_cause is None  # it lives in the unreadable extra


def test_a_pickers_own_call_is_not_a_record_of_its_own() -> None:
    """q05: the picker's channel starts under a linkedid of its own; CEL ends that
    linkedid once the channel joined the picked call. One record, none left open."""
    rows = trace_rows(trace("q05_sip_pickup"))
    linkedids = {row["linkedid"] for row in rows}
    assert len(linkedids) == 2
    interpreter = CelInterpreter(trace_pbx("q05_sip_pickup"))
    records = [r for row in rows for r in interpreter.feed(row)]
    assert len(records) == 1 and interpreter.open_calls == 0
    (record,) = records
    assert record.agent == "PJSIP/1002"
    picker = record.attempts[-1]
    assert picker.offered_at == picker.ended_at == record.answered_at


def test_voicemail_queue_and_hold_come_from_rows() -> None:
    (vm,) = interpret(trace_rows(trace("04_missed_noanswer_voicemail")),
                      trace_pbx("04_missed_noanswer_voicemail"))
    assert vm.voicemail and vm.reason == "voicemail"
    (queued,) = interpret(trace_rows(trace("07b_queue_abandoned")),
                          trace_pbx("07b_queue_abandoned"))
    assert queued.queue == "support" and queued.reason == "while_ringing"
    (held,) = interpret(trace_rows(trace("q03_sip_hold_reinvite")),
                        trace_pbx("q03_sip_hold_reinvite"))
    assert held.hold_seconds == pytest.approx(6.0, abs=0.1)
    (consulted,) = interpret(trace_rows(trace("09b_attended_transfer")),
                             trace_pbx("09b_attended_transfer"))
    assert consulted.hold_seconds == pytest.approx(8.2, abs=0.1)  # DESIGN.md's figure


def test_cel_record_round_trips_through_its_dict() -> None:
    (record,) = interpret(trace_rows(trace("q04_sip_refer_blind_transfer")),
                          trace_pbx("q04_sip_refer_blind_transfer"))
    data = json.loads(json.dumps(record.to_dict()))
    assert data["source"] == "cel" and data["rings_estimated"] is True
    assert CallRecord.from_dict(data).to_dict() == data
    older = {k: v for k, v in data.items() if k not in ("source", "rings_estimated")}
    restored = CallRecord.from_dict(older)
    assert restored.source == "ami" and restored.rings_estimated is False


@pytest.mark.parametrize(("seconds", "rings"), [
    (0.0, 0), (0.1, 1), (4.99, 1), (5.0, 2), (14.99, 3), (15.0, 4)])
def test_rings_count_the_bursts_started(seconds: float, rings: int) -> None:
    assert rings_for(seconds, 5.0) == rings


def test_ring_span_runs_over_all_offers_and_ignores_those_after_the_answer() -> None:
    offers = [(0.0, 0.0, 15.0), (15.0, 15.0, 19.0), (30.0, 30.0, 34.0)]
    assert ring_span(offers, answered_at=19.0, ended_at=60.0) == (0.0, 19.0)
    assert ring_span(offers[:2], answered_at=None, ended_at=60.0) == (0.0, 19.0)
    assert ring_span([(0.0, None, 1.0)], answered_at=None, ended_at=5.0) == (None, 0.0)


def test_a_pickers_own_call_ending_after_the_picked_call_is_no_record_either() -> None:
    rows = trace_rows(trace("q05_sip_pickup"))
    picked = rows[0]["linkedid"]
    ends = [r for r in rows if r["eventtype"] == "LINKEDID_END"]
    assert [r["linkedid"] == picked for r in ends] == [False, True]
    reordered = [r for r in rows if r["eventtype"] != "LINKEDID_END"] + ends[::-1]
    interpreter = CelInterpreter(trace_pbx("q05_sip_pickup"))
    records = [r for row in reordered for r in interpreter.feed(row)]
    assert [r.linkedid for r in records] == [picked]
    assert interpreter.open_calls == 0


def test_queue_from_app_start_rows_alone() -> None:
    """A site logging APP_START/APP_END (cel.conf `apps=queue`) and no music on hold:
    the queue and the abandon in it come from those rows."""
    rows = [r for r in trace_rows(trace("07b_queue_abandoned"))
            if not r["eventtype"].startswith("STREAM_")]
    origin_answer = next(i for i, r in enumerate(rows)
                         if r["eventtype"] == "ANSWER" and r["appname"] == "Answer")
    start = {**rows[origin_answer], "eventtype": "APP_START", "appname": "Queue",
             "appdata": "support,,,,300", "id": 0}
    rows.insert(origin_answer + 1, start)
    (record,) = interpret(rows, trace_pbx("07b_queue_abandoned"))
    assert record.queue == "support"
    assert (record.outcome, record.reason) == ("abandoned", "while_ringing")


def _origin_only(name: str) -> list[dict[str, Any]]:
    """A trace's rows of the caller's channels only: a call that never reached an agent."""
    rows = trace_rows(trace(name))
    origin = rows[0]["channame"].rsplit(";", 1)[0]
    return [r for r in rows if r["channame"].startswith(origin)]


def test_caller_hanging_up_before_any_offer_abandons_in_ivr() -> None:
    rows = [{**r, "extra": r["extra"].replace('"CANCEL"', '""')}
            for r in _origin_only("03_abandoned_ringing")]
    (record,) = interpret(rows, trace_pbx("03_abandoned_ringing"))
    assert (record.outcome, record.reason, record.attempts) == ("abandoned", "in_ivr", [])


def test_dialplan_hanging_up_with_no_offer_is_missed_with_no_agent_on_duty() -> None:
    rows = [r for r in _origin_only("04_missed_noanswer_voicemail")
            if r["exten"] != "voicemail" or r["eventtype"] == "HANGUP"]
    rows = [{**r, "exten": "nobody", "extra": r["extra"].replace('"NOANSWER"', '""')}
            if r["eventtype"] == "HANGUP" else r for r in rows]
    (record,) = interpret(rows, trace_pbx("04_missed_noanswer_voicemail"))
    assert not record.voicemail
    assert (record.outcome, record.reason, record.hangup_by) == (
        "missed", "no_agent_on_duty", None)
