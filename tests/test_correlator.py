"""Correlator behaviour beyond the ground truths: interleaving, staleness, resync, bad input.

Event streams are the recorded ones, re-mixed or cut; nothing is invented
but the single events a test is about.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from traces_fixtures import all_traces, stamped, trace_messages, trace_pbx

from callhub.ami.correlator import ROUTE_RESULT_VARIABLE, Correlator, interface_of
from callhub.ami.groundtruth import load_truth, pbx_from_truth
from callhub.ami.parser import AmiMessage, iter_file_messages
from callhub.ami.replay import replay_messages
from callhub.records import CallRecord


def feed_all(correlator: Correlator, messages: list[AmiMessage]) -> list[CallRecord]:
    return [record for m in messages for record in correlator.feed(m)]


def test_interleaved_calls_of_many_traces_give_the_same_records() -> None:
    """All Local-channel traces merged into one stream by time: each call as on its own."""
    names = [p.stem for p in all_traces() if not p.stem.startswith("p")]
    pbx = trace_pbx(names[0])
    alone = {r.linkedid: r.to_dict() for n in names
             for r in replay_messages(trace_messages(n), pbx)}
    # Shift every trace to start at the same moment so that their calls overlap.
    merged: list[tuple[float, int, AmiMessage]] = []
    for n in names:
        events = stamped(trace_messages(n))
        t0 = float(events[0]["Timestamp"])
        merged += [(float(m["Timestamp"]) - t0, i, m) for i, m in enumerate(events)]
    merged.sort(key=lambda x: (x[0], x[1]))
    correlator = Correlator(pbx)
    together = {r.linkedid: r.to_dict() for r in feed_all(correlator, [m for *_, m in merged])}
    assert together == alone
    assert correlator.active_calls == 0


def test_finished_call_state_is_freed_and_late_events_start_no_ghost_call() -> None:
    messages = stamped(trace_messages("01_answered_caller_hangup"))
    correlator = Correlator(trace_pbx("01_answered_caller_hangup"))
    records = feed_all(correlator, messages)
    assert len(records) == 1 and correlator.active_calls == 0
    late = [m for m in messages if m.get("Event") == "Hangup"][-1]
    assert correlator.feed(late) == [] and correlator.active_calls == 0


def test_a_call_whose_events_stop_is_closed_after_the_stale_timeout() -> None:
    messages = stamped(trace_messages("01_answered_caller_hangup"))
    cut = next(i for i, m in enumerate(messages) if m.get("Event") == "SoftHangupRequest")
    now = [0.0]
    correlator = Correlator(trace_pbx("01_answered_caller_hangup"), clock=lambda: now[0],
                            stale_after=600.0)
    assert feed_all(correlator, messages[:cut]) == []
    last = float(messages[cut - 1]["Timestamp"])
    assert correlator.expire(last + 599.0) == []
    (record,) = correlator.expire(last + 601.0)
    assert record.incomplete and record.outcome == "answered"
    assert record.ended_at == pytest.approx(last)
    assert correlator.active_calls == 0


def test_busy_interfaces_follow_live_channels() -> None:
    messages = stamped(trace_messages("01_answered_caller_hangup"))
    correlator = Correlator(trace_pbx("01_answered_caller_hangup"))
    answered = next(i for i, m in enumerate(messages) if m.get("Event") == "BridgeEnter")
    feed_all(correlator, messages[:answered])
    assert "Local/agent1@agentsim" in correlator.busy_interfaces()
    feed_all(correlator, messages[answered:])
    assert correlator.busy_interfaces() == set()


def _core_show_lists(name: str) -> list[list[AmiMessage]]:
    lists: dict[str, list[AmiMessage]] = {}
    for m in trace_messages(name):
        if m.get("Event") == "CoreShowChannel":
            lists.setdefault(m["ActionID"], []).append(m)
    return list(lists.values())


def test_resync_after_a_disconnect_keeps_a_ringing_call_once() -> None:
    """Trace 12 asked CoreShowChannels while ringing and mid-talk: drop all events between,
    reconcile with the second list, and the call is still recorded exactly once."""
    name = "12_version_coreshowchannels"
    messages = trace_messages(name)
    ringing_list, talking_list = _core_show_lists(name)
    first = messages.index(ringing_list[0])
    second = messages.index(talking_list[-1])
    now = [float(messages[second - 1].get("Timestamp", 0) or 0)]
    correlator = Correlator(trace_pbx(name), clock=lambda: now[0])
    assert feed_all(correlator, stamped(messages[:first])) == []
    # Disconnected: the events up to the second list are lost.
    assert correlator.reconcile(talking_list) == []
    records = feed_all(correlator, stamped(messages[second:]))
    (record,) = records
    truth = load_truth(next(p for p in all_traces() if p.stem == name))
    assert record.linkedid == truth["expected"]["calls"][0]["linkedid"]
    assert record.outcome == "answered" and correlator.active_calls == 0


def test_resync_closes_a_call_that_ended_while_disconnected() -> None:
    name = "12_version_coreshowchannels"
    messages = trace_messages(name)
    ringing_list, _ = _core_show_lists(name)
    first = messages.index(ringing_list[0])
    correlator = Correlator(trace_pbx(name))
    feed_all(correlator, stamped(messages[:first]))
    (record,) = correlator.reconcile([])
    assert record.incomplete
    # Events of that call that still arrive later start nothing new.
    assert feed_all(correlator, stamped(messages[first:])) == []
    assert correlator.active_calls == 0


def test_a_call_gone_at_the_resync_ends_when_the_stream_was_last_alive() -> None:
    """A call the snapshot no longer lists ended in the gap: it is closed when the stream
    was last known alive (`begin_resync(alive_until)`), never before its own last event
    nor after the reconnect; without that moment, at the reconnect."""
    name = "12_version_coreshowchannels"
    messages = trace_messages(name)
    ringing_list, _ = _core_show_lists(name)
    first = messages.index(ringing_list[0])
    reconnect = 1_900_000_000.0
    last_event = 0.0  # the call's own last event (the stream's last may be another's)

    def closed_at(alive_until: float | None) -> float | None:
        nonlocal last_event
        correlator = Correlator(trace_pbx(name), clock=lambda: reconnect)
        feed_all(correlator, stamped(messages[:first]))
        (call,) = correlator.calls.values()
        last_event = call.last_event_at
        correlator.begin_resync(alive_until)
        (record,) = correlator.reconcile([])
        assert record.incomplete
        return record.ended_at

    closed_at(None)
    assert closed_at(last_event + 7.5) == last_event + 7.5
    assert closed_at(last_event - 60) == last_event  # it was alive at its last event
    assert closed_at(reconnect + 60) == reconnect  # a moment past the reconnect: now
    assert closed_at(None) == reconnect


def test_a_lazy_resync_changes_the_state_at_once_and_builds_the_same_records_later() -> None:
    """The daemon reads the records of a large resync slice by slice, with events arriving
    in between: the calls are closed before the first record is built."""
    name = "12_version_coreshowchannels"
    messages = trace_messages(name)
    ringing_list, _ = _core_show_lists(name)
    first = messages.index(ringing_list[0])
    at = 1_900_000_000.0  # both close their calls at the same moment
    eager = Correlator(trace_pbx(name), clock=lambda: at)
    lazy = Correlator(trace_pbx(name), clock=lambda: at)
    for correlator in (eager, lazy):
        feed_all(correlator, stamped(messages[:first]))
    expected = eager.reconcile([])
    records = lazy.reconcile_lazily([])
    assert lazy.active_calls == 0  # closed already, nothing built yet
    assert feed_all(lazy, stamped(messages[first:])) == []  # late events start nothing
    assert [r.to_dict() for r in records] == [r.to_dict() for r in expected] != []


def test_resync_adopts_a_call_that_started_while_disconnected() -> None:
    name = "12_version_coreshowchannels"
    messages = trace_messages(name)
    _, talking_list = _core_show_lists(name)
    second = messages.index(talking_list[-1])
    correlator = Correlator(trace_pbx(name))
    assert correlator.reconcile(talking_list) == []
    assert correlator.active_calls == 1
    (record,) = feed_all(correlator, stamped(messages[second:]))
    assert record.incomplete and record.direction == "inbound"
    assert record.outcome == "answered" and record.agent == "Local/agent2@agentsim"


def _without_agent_legs(name: str) -> list[AmiMessage]:
    """A trace with every agent channel and dial removed: the caller waits in the dialplan."""
    def agent(m: AmiMessage) -> bool:
        return any("@agentsim" in m.get(k, "") for k in ("Channel", "DestChannel"))
    return [m for m in stamped(trace_messages(name)) if not agent(m)
            and m.get("Event") not in ("DialBegin", "DialState", "DialEnd")]


def test_caller_hanging_up_before_any_attempt_abandons_in_ivr() -> None:
    name = "03_abandoned_ringing"
    (record,) = list(replay_messages(_without_agent_legs(name), trace_pbx(name)))
    assert (record.outcome, record.reason) == ("abandoned", "in_ivr")
    assert record.attempts == [] and record.rings == 0
    assert not record.short_abandon  # waited about 9 s, threshold 5 s
    strict = replace(trace_pbx(name), short_abandon_seconds=10.0)
    (record,) = list(replay_messages(_without_agent_legs(name), strict))
    assert record.short_abandon and record.outcome == "abandoned"


def test_route_result_no_agent_on_duty_decides_the_reason_of_a_lost_call() -> None:
    name = "04_missed_noanswer_voicemail"
    messages = stamped(trace_messages(name))
    (plain,) = list(replay_messages(messages, trace_pbx(name)))
    assert plain.reason == "voicemail"
    origin = next(m for m in messages if m.get("Event") == "Newchannel")
    varset = {"Event": "VarSet", "Channel": origin["Channel"], "Uniqueid": origin["Uniqueid"],
              "Linkedid": origin["Linkedid"], "Variable": ROUTE_RESULT_VARIABLE,
              "Value": "no_agent_on_duty", "Timestamp": origin["Timestamp"]}
    at = messages.index(origin) + 1  # the dialplan sets it once the channel exists
    (routed,) = list(replay_messages([*messages[:at], varset, *messages[at:]], trace_pbx(name)))
    assert (routed.outcome, routed.reason) == ("missed", "no_agent_on_duty")


@pytest.mark.parametrize("cadence", [3.0, 5.0, 6.0])
def test_rings_follow_the_cadence(cadence: float) -> None:
    for path in all_traces():
        pbx = replace(pbx_from_truth(load_truth(path)), ring_cadence_seconds=cadence)
        for record in replay_messages(iter_file_messages(path), pbx):
            expected = math.floor(record.ring_seconds / cadence) + 1 if record.ring_seconds else 0
            assert record.rings == expected
            assert record.ring_seconds >= 0 and record.wait_seconds >= record.ring_seconds - 1e-6


def test_events_with_missing_or_odd_headers_never_raise() -> None:
    correlator = Correlator(trace_pbx("01_answered_caller_hangup"))
    bad: list[AmiMessage] = [
        {"Event": "Newchannel"},
        {"Event": "Newchannel", "Linkedid": "1.1"},
        {"Event": "DialEnd", "DestLinkedid": "1.1", "DestChannel": "PJSIP/x-00000001"},
        {"Event": "Hangup", "Linkedid": "1.1", "Timestamp": "not-a-number"},
        {"Event": "BridgeEnter", "Linkedid": "1.1"},
        {"Event": "AttendedTransfer", "TransfereeLinkedid": "1.1", "Result": "Success"},
        {"Event": "SomethingNew", "Linkedid": "1.1"},
    ]
    for event in bad:
        correlator.feed(event)
    # The half-seen call is still closable, and good calls still correlate afterwards.
    assert all(r.incomplete for r in correlator.flush())
    assert len(feed_all(correlator, stamped(trace_messages("01_answered_caller_hangup")))) == 1


def test_interface_of_strips_the_unique_suffix() -> None:
    assert interface_of("PJSIP/1001-0000002a") == "PJSIP/1001"
    assert interface_of("Local/agent1@agentsim-00000001;2") == "Local/agent1@agentsim"
    assert interface_of("PJSIP/trunk") == "PJSIP/trunk"


def test_events_newer_than_the_resync_snapshot_win_over_it() -> None:
    """Events fed between asking CoreShowChannels and reconciling are newer than the list:
    a call that ended meanwhile is not brought back, one that started is not closed."""
    name = "12_version_coreshowchannels"
    messages = stamped(trace_messages(name))
    ringing_list, _ = _core_show_lists(name)
    correlator = Correlator(trace_pbx(name))
    correlator.begin_resync()
    # The whole call is read before the (stale) ringing-time list is reconciled.
    (record,) = feed_all(correlator, messages)
    assert correlator.reconcile(ringing_list) == []
    assert correlator.active_calls == 0 and not record.incomplete

    fresh = Correlator(trace_pbx(name))
    fresh.begin_resync()
    first_half = messages[: len(messages) // 2]
    feed_all(fresh, first_half)
    assert fresh.reconcile([]) == []  # the empty list predates the call: it stays open
    assert len(feed_all(fresh, messages[len(messages) // 2:])) == 1


def test_only_a_newchannel_or_a_resync_opens_a_call() -> None:
    """A call's events without its Newchannel open nothing (orphans); during a resync they
    are held, and applied once the snapshot shows the call live, or dropped when it does not."""
    name = "12_version_coreshowchannels"
    messages = trace_messages(name)
    _, talking_list = _core_show_lists(name)
    second = messages.index(talking_list[-1])
    tail = [m for m in stamped(messages[second:]) if m.get("Event") != "Newchannel"]
    correlator = Correlator(trace_pbx(name))
    assert feed_all(correlator, tail) == []
    assert correlator.active_calls == 0 and correlator.orphans > 0

    held = Correlator(trace_pbx(name))
    held.begin_resync()
    assert feed_all(held, tail) == [] and held.active_calls == 0
    (record,) = held.reconcile(talking_list)  # the held hangups end the adopted call
    assert record.incomplete and record.outcome == "answered"
    assert held.active_calls == 0 and held.orphans == 0

    dropped = Correlator(trace_pbx(name))
    dropped.begin_resync()
    feed_all(dropped, tail)
    assert dropped.reconcile([]) == [] and dropped.active_calls == 0
    assert dropped.orphans == correlator.orphans
