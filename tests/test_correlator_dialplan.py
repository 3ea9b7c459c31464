"""What the inbound dialplan runs before an agent answers: playing ringback while it looks
the agent up is still routing; playing busy or congestion is giving up (DESIGN.md: a call
is `abandoned` when the caller hung up before any agent answered, `missed` when it ended
unanswered without the caller giving up first).

Every case is trace 03 (Dial(Local/agent1@agentsim,20), the agent's phone rings 9 s, the
caller hangs up) with the single dialplan step a test is about added on the inbound leg.
"""

from __future__ import annotations

from traces_fixtures import first, like, only_record, stamped, trace_messages

from callhub.ami.parser import AmiMessage
from callhub.records import CallRecord

T03 = "03_abandoned_ringing"
INBOUND = "Local/4008001000@from-pstn-00000004;2"  # the leg that runs the routing dialplan


def correlate(messages: list[AmiMessage]) -> CallRecord:
    return only_record(T03, messages)


def dial_of(messages: list[AmiMessage]) -> int:
    """Index of the inbound leg's Newexten that runs its Dial."""
    return next(i for i, m in enumerate(messages) if m.get("Event") == "Newexten"
                and m.get("Channel") == INBOUND and m.get("Application") == "Dial")


def steps(messages: list[AmiMessage], *apps: tuple[str, str]) -> list[AmiMessage]:
    """Newexten of the inbound leg running `apps` (application, data), each a copy of the
    Newexten of its Dial."""
    return [like(messages[dial_of(messages)], "Newexten", Application=app, AppData=data)
            for app, data in apps]


def with_steps_before_dial(messages: list[AmiMessage],
                           *apps: tuple[str, str]) -> list[AmiMessage]:
    """The trace with the inbound leg running `apps` just before its Dial."""
    dial = dial_of(messages)
    return [*messages[:dial], *steps(messages, *apps), *messages[dial:]]


def with_steps_instead_of_dial(messages: list[AmiMessage],
                               *apps: tuple[str, str]) -> list[AmiMessage]:
    """The trace with the inbound leg running `apps` where it ran its Dial, and then nothing
    of the agent's phone: only the caller's two halves until the caller hangs up."""
    dial = dial_of(messages)
    hangup = first(messages, "HangupRequest", INBOUND)

    def caller_only(m: AmiMessage) -> bool:
        return "@from-pstn" in m.get("Channel", "") and m.get("Event") not in (
            "DialBegin", "DialState", "DialEnd")
    return [*messages[:dial], *steps(messages, *apps),
            *(m for m in messages[hangup:] if caller_only(m))]


def test_ringback_played_before_the_dial_leaves_a_hang_up_while_ringing_abandoned() -> None:
    """Playtones(ring) while an AGI looks the agent up, then Dial: the caller who hangs up
    while the agent's phone rings abandoned the call while ringing, as without the tone."""
    messages = stamped(trace_messages(T03))
    plain = correlate(messages)
    assert (plain.outcome, plain.reason) == ("abandoned", "while_ringing")
    record = correlate(with_steps_before_dial(
        messages, ("Playtones", "ring"), ("AGI", "agi://127.0.0.1:4573/route")))
    assert (record.outcome, record.reason) == ("abandoned", "while_ringing")
    assert [(a.interface, a.result) for a in record.attempts] == [
        ("Local/agent1@agentsim", "cancelled")]
    assert record.ring_seconds == plain.ring_seconds


def test_a_dial_after_a_busy_tone_is_routing_again() -> None:
    """The dialplan played busy, then dialled an agent after all (a second routing step):
    the caller hanging up while that phone rings abandoned the call."""
    messages = stamped(trace_messages(T03))
    record = correlate(with_steps_before_dial(messages, ("Playtones", "busy"),
                                              ("Wait", "2")))
    assert (record.outcome, record.reason) == ("abandoned", "while_ringing")


def test_a_caller_leaving_during_ringback_before_any_dial_abandons_in_ivr() -> None:
    messages = stamped(trace_messages(T03))
    record = correlate(with_steps_instead_of_dial(
        messages, ("Playtones", "ring"), ("AGI", "agi://127.0.0.1:4573/route")))
    assert (record.outcome, record.reason) == ("abandoned", "in_ivr")
    assert record.attempts == []


def test_a_busy_or_congestion_tone_is_the_dialplan_giving_up() -> None:
    """Playtones(busy) / Playtones(congestion) with no agent dialled: the caller hanging up
    on the tone did not give up first, the dialplan did; the call is missed."""
    messages = stamped(trace_messages(T03))
    for tone in ("busy", "congestion"):
        record = correlate(with_steps_instead_of_dial(
            messages, ("Playtones", tone), ("Wait", "10")))
        assert record.outcome == "missed", tone
        assert record.attempts == []
