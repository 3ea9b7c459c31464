"""hold_seconds by DESIGN.md: spans from `Hold` on any of the call's channels to that
channel's `Unhold`, `BridgeLeave` or hangup, with MusicOnHold on the caller's channel;
overlaps count once. Cases are q03 (the agent's phone holds with a re-INVITE: Hold and
Unhold on PJSIP/1001, MOH on the caller's trunk) with events left out."""

from __future__ import annotations

import pytest
from traces_fixtures import about, first, stamped, trace_messages, trace_pbx

from callhub.ami.parser import AmiMessage
from callhub.ami.replay import replay_messages
from callhub.records import CallRecord

Q03 = "q03_sip_hold_reinvite"
AGENT, CALLER = "PJSIP/1001", "PJSIP/trunk"
MOH = ("MusicOnHoldStart", "MusicOnHoldStop")


def q03(*dropped: str, agent_leaves: bool = True) -> list[AmiMessage]:
    """q03 without the events of kinds `dropped`; without the agent's BridgeLeave unless
    `agent_leaves`."""
    return [m for m in stamped(trace_messages(Q03)) if m.get("Event") not in dropped
            and (agent_leaves or not (m.get("Event") == "BridgeLeave" and about(m, AGENT)))]


def at(messages: list[AmiMessage], event: str, channel: str) -> float:
    return float(messages[first(messages, event, channel)]["Timestamp"])


def record(messages: list[AmiMessage], name: str = Q03) -> CallRecord:
    (only,) = list(replay_messages(messages, trace_pbx(name)))
    return only


def test_hold_and_music_on_hold_overlapping_count_once() -> None:
    messages = q03()
    held = min(at(messages, "Hold", AGENT), at(messages, "MusicOnHoldStart", CALLER))
    resumed = max(at(messages, "Unhold", AGENT), at(messages, "MusicOnHoldStop", CALLER))
    assert record(messages).hold_seconds == pytest.approx(resumed - held, abs=0.002)


def test_hold_signalled_only_on_the_agents_leg_counts() -> None:
    """A phone that plays its own hold music (or the HOLD intercept): Hold/Unhold alone."""
    messages = q03(*MOH)
    expected = at(messages, "Unhold", AGENT) - at(messages, "Hold", AGENT)
    assert expected > 5.0
    assert record(messages).hold_seconds == pytest.approx(expected, abs=0.002)


def test_a_hold_without_unhold_ends_when_the_agent_leaves_the_bridge_or_hangs_up() -> None:
    messages = q03("Unhold", *MOH)
    expected = at(messages, "BridgeLeave", AGENT) - at(messages, "Hold", AGENT)
    assert record(messages).hold_seconds == pytest.approx(expected, abs=0.002)
    messages = q03("Unhold", *MOH, agent_leaves=False)
    expected = at(messages, "Hangup", AGENT) - at(messages, "Hold", AGENT)
    assert record(messages).hold_seconds == pytest.approx(expected, abs=0.002)


def test_music_on_hold_on_the_callers_channel_alone_counts() -> None:
    messages = q03("Hold", "Unhold")
    expected = at(messages, "MusicOnHoldStop", CALLER) - at(messages, "MusicOnHoldStart", CALLER)
    assert record(messages).hold_seconds == pytest.approx(expected, abs=0.002)


def test_the_attended_transfer_holds_the_caller_until_the_agent_leaves() -> None:
    """DESIGN.md: 09b has Hold on agent1 with no Unhold (it ends at agent1's BridgeLeave
    into the consult bridge) and MOH on the caller until agent1 leaves: 8.2 s."""
    name = "09b_attended_transfer"
    assert record(stamped(trace_messages(name)), name).hold_seconds == pytest.approx(8.2, abs=0.1)


@pytest.mark.parametrize("name", ["07a_queue_answered", "07c_queue_rna_then_answer"])
def test_queue_music_before_the_answer_is_no_hold(name: str) -> None:
    messages = stamped(trace_messages(name))
    assert any(m.get("Event") == "MusicOnHoldStart" for m in messages)
    assert record(messages, name).hold_seconds == 0.0
